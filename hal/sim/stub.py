"""An i2c-stub-like adapter: the real smbus backend over a simulated board.

Linux's ``i2c-stub`` module gives a fake adapter whose chips answer from memory;
:class:`StubAdapter` does the same one level up, standing in for ``smbus2.SMBus``
at the ioctl edge. ``SMBusBackend(smbus_class=StubAdapter(board))`` opens
``/dev/i2c-N`` as the simulated board's bus N; each ``i2c_msg`` of an ``i2c_rdwr``
goes to that bus, read messages get their buffers filled, and a failed transfer is
the kernel's ``OSError`` with its errno. So the real backend's whole successful
path (message building, buffer handling, errno translation) runs without an
adapter: tests use it, and so does the stall measurement (:mod:`hal.stall`).

``paths`` and ``calls`` (address, is-read, bytes per message, one list per ioctl)
record what the backend asked for.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from hal.exc import I2CError
from hal.sim.board import Board

if TYPE_CHECKING:
    from smbus2 import i2c_msg


class StubAdapter:
    """A callable ``smbus_class``: ``StubAdapter(board)(path)`` opens a stub bus."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.paths: list[str] = []
        self.calls: list[list[tuple[int, bool, bytes]]] = []

    def __call__(self, path: str) -> StubBus:
        """Open ``/dev/i2c-N`` as the board's bus N."""
        self.paths.append(path)
        return StubBus(self, int(path.rsplit("-", 1)[1]))


class StubBus:
    """What ``smbus2.SMBus`` offers the backend: ``i2c_rdwr`` and ``close``."""

    def __init__(self, adapter: StubAdapter, number: int) -> None:
        self._adapter = adapter
        self._bus = adapter.board.bus(number)

    def i2c_rdwr(self, *msgs: i2c_msg) -> None:
        """Carry out each message in order, as one combined transaction."""
        from smbus2.smbus2 import I2C_M_RD

        call: list[tuple[int, bool, bytes]] = []
        self._adapter.calls.append(call)
        for msg in msgs:
            reading = bool(msg.flags & I2C_M_RD)
            try:
                if reading:
                    data = self._bus.read(msg.addr, msg.len)
                    ctypes.memmove(msg.buf, data, msg.len)
                else:
                    data = bytes(msg)
                    self._bus.write(msg.addr, data)
            except I2CError as exc:
                raise OSError(exc.errno, "stub adapter") from None
            call.append((msg.addr, reading, data))

    def close(self) -> None:
        """Nothing to release."""
