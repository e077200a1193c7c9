"""Fixtures for the HAL tests: a simulated board on a manual clock.

With :class:`hal.sim.clock.ManualClock` a driver's waits advance simulated time
instantly and are recorded in ``clock.sleeps``, so tests are fast and can assert
the waits the datasheets prescribe.
"""

from __future__ import annotations

import ctypes

import pytest
from smbus2 import i2c_msg
from smbus2.smbus2 import I2C_M_RD

from hal.backend import MockBackend
from hal.exc import I2CError
from hal.sim.board import Board
from hal.sim.boards import build_board
from hal.sim.clock import ManualClock

#: Conditions pinned for tests that compare readings with the environment.
PINNED = {
    "temperature_c": 21.5,
    "humidity_pct": 48.0,
    "pressure_hpa": 1009.25,
    "illuminance_lux": 321.0,
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def board(clock: ManualClock) -> Board:
    """The default board, drift off, conditions pinned to :data:`PINNED`."""
    board = build_board("default", seed=7, clock=clock)
    board.environment.set_drift(False)
    board.environment.set(**PINNED)
    return board


@pytest.fixture
def backend(board: Board) -> MockBackend:
    return MockBackend(board)


class StubAdapter:
    """Stands in for ``smbus2.SMBus`` at the ioctl edge, as Linux's i2c-stub does.

    ``SMBusBackend(smbus_class=StubAdapter(board))`` opens ``/dev/i2c-N`` as the
    simulated board's bus N; each ``i2c_msg`` of an ``i2c_rdwr`` goes to that bus,
    read messages get their buffers filled, and a failed transfer is the kernel's
    ``OSError`` with its errno. ``paths`` and ``calls`` (address, is-read, bytes per
    message, one list per ioctl) record what the backend asked for.
    """

    def __init__(self, board: Board) -> None:
        self.board = board
        self.paths: list[str] = []
        self.calls: list[list[tuple[int, bool, bytes]]] = []

    def __call__(self, path: str) -> _StubBus:
        self.paths.append(path)
        return _StubBus(self, int(path.rsplit("-", 1)[1]))


class _StubBus:
    def __init__(self, adapter: StubAdapter, number: int) -> None:
        self._adapter = adapter
        self._bus = adapter.board.bus(number)

    def i2c_rdwr(self, *msgs: i2c_msg) -> None:
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
        pass
