"""A simulated board: buses of simulated chips, with fault injection.

:class:`SimBus` implements :class:`hal.bus.I2CBus` by handing each transfer to the
chip at the address, exactly as the wire would: a combined register read is a
write transfer followed by a read transfer. Faults are injected per bus or per
chip and produce the errno Linux's i2c-dev reports:

* nobody at the address (never fitted, or :meth:`Board.remove`-d): ``ENXIO``
* :meth:`Board.nack`: the chip NACKs (``EREMOTEIO``) the next ``count`` transfers
* :meth:`Board.io_error`: ``EIO`` for the next ``count`` transfers
* :meth:`Board.stick`: SDA held low, every transfer on the bus ``ETIMEDOUT``
* :meth:`Board.corrupt_crc`: the next ``count`` reads carry wrong CRC bytes
* :meth:`Board.restore`: a removed chip comes back in its power-on state

A fault with ``count=None`` lasts until cleared. Every transfer is logged
(bounded) for tests that assert what was sent.
"""

from __future__ import annotations

import errno
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from hal.bus import check_address
from hal.exc import BusUnavailableError, I2CError, UnknownBackendError
from hal.sim.chip import Attachment, Nack, SimChip
from hal.sim.clock import RealClock, SimClock
from hal.sim.environment import Environment

LOG_LENGTH = 2000


@dataclass(frozen=True)
class Transfer:
    """One logged transfer: ``kind`` is ``"write"`` or ``"read"``; ``error`` an errno or 0."""

    bus: int
    address: int
    kind: str
    data: bytes
    error: int = 0


@dataclass
class _Fault:
    errno: int
    remaining: int | None  # None: until cleared


class Board:
    """Simulated buses and chips sharing one clock and one environment."""

    def __init__(
        self,
        name: str = "custom",
        *,
        seed: int | None = None,
        clock: SimClock | None = None,
        environment: Environment | None = None,
    ) -> None:
        self.name = name
        self.clock: SimClock = clock or RealClock()
        self.environment = environment or Environment(self.clock.monotonic, seed=seed)
        self._rng = random.Random(0 if seed is None else seed)
        self._lock = threading.RLock()
        self._chips: dict[tuple[int, int], SimChip] = {}
        self._buses: dict[int, SimBus] = {}
        self._removed: set[tuple[int, int]] = set()
        self._stuck: set[int] = set()
        self._faults: dict[tuple[int, int], _Fault] = {}
        self.log: deque[Transfer] = deque(maxlen=LOG_LENGTH)

    # -- building ---------------------------------------------------------------------

    def add_bus(self, number: int) -> SimBus:
        """Create (or return) simulated bus ``number``."""
        with self._lock:
            if number not in self._buses:
                self._buses[number] = SimBus(self, number)
            return self._buses[number]

    def attach(self, bus: int, address: int, chip: SimChip) -> SimChip:
        """Fit ``chip`` at ``address`` on ``bus`` (creating the bus) and power it on."""
        check_address(address)
        with self._lock:
            self.add_bus(bus)
            if (bus, address) in self._chips:
                raise ValueError(f"bus {bus} already has a chip at 0x{address:02x}")
            rng = random.Random(self._rng.getrandbits(64))
            chip.attach(Attachment(bus, address, self.clock, self.environment, rng))
            self._chips[(bus, address)] = chip
            return chip

    # -- looking ----------------------------------------------------------------------

    @property
    def buses(self) -> tuple[int, ...]:
        """The simulated bus numbers."""
        with self._lock:
            return tuple(sorted(self._buses))

    def bus(self, number: int) -> SimBus:
        """Simulated bus ``number``; :class:`hal.exc.BusUnavailableError` if there is none."""
        with self._lock:
            if number not in self._buses:
                raise BusUnavailableError(
                    errno.ENOENT,
                    number,
                    f"mock:{self.name}/i2c-{number}",
                    f"mock board {self.name!r} has buses {list(self.buses)}",
                )
            return self._buses[number]

    def chip(self, bus: int, address: int) -> SimChip:
        """The chip fitted at ``address`` on ``bus`` (even if currently removed);
        :class:`hal.exc.UnknownBackendError` if none is fitted there."""
        with self._lock:
            try:
                return self._chips[(bus, address)]
            except KeyError:
                raise UnknownBackendError(
                    f"mock board {self.name!r} has no chip at i2c-{bus} 0x{address:02x}"
                ) from None

    # -- faults -----------------------------------------------------------------------

    def nack(self, bus: int, address: int, count: int | None = None) -> None:
        """The chip NACKs (``EREMOTEIO``) the next ``count`` transfers (None: until cleared)."""
        self._set_fault(bus, address, errno.EREMOTEIO, count)

    def io_error(self, bus: int, address: int, count: int | None = None) -> None:
        """The next ``count`` transfers to the chip fail with ``EIO``."""
        self._set_fault(bus, address, errno.EIO, count)

    def stick(self, bus: int) -> None:
        """Hold the bus's SDA low: every transfer on it times out (``ETIMEDOUT``)."""
        with self._lock:
            self.bus(bus)
            self._stuck.add(bus)

    def unstick(self, bus: int) -> None:
        """Release a stuck bus."""
        with self._lock:
            self._stuck.discard(bus)

    def remove(self, bus: int, address: int) -> None:
        """The chip disappears (unplugged, lost power): transfers get ``ENXIO``."""
        with self._lock:
            self.chip(bus, address)
            self._removed.add((bus, address))

    def restore(self, bus: int, address: int) -> None:
        """A removed chip comes back, in its power-on state."""
        with self._lock:
            chip = self.chip(bus, address)
            if (bus, address) in self._removed:
                self._removed.discard((bus, address))
                chip.power_on_reset()

    def corrupt_crc(self, bus: int, address: int, count: int = 1) -> None:
        """The chip's next ``count`` reads carry a wrong CRC byte."""
        with self._lock:
            self.chip(bus, address).corrupt_crc_reads = count

    def clear_faults(self) -> None:
        """Remove every fault (removed chips come back powered on)."""
        with self._lock:
            for key in list(self._removed):
                self.restore(*key)
            self._stuck.clear()
            self._faults.clear()
            for chip in self._chips.values():
                chip.corrupt_crc_reads = 0

    def _set_fault(self, bus: int, address: int, err: int, count: int | None) -> None:
        with self._lock:
            self.bus(bus)
            self._faults[(bus, address)] = _Fault(err, count)

    # -- transfers (called by SimBus) ----------------------------------------------------

    def transfer_write(self, bus: int, address: int, data: bytes) -> None:
        """Deliver one write transfer."""
        with self._lock:
            chip = self._target(bus, address, "write", data)
            try:
                chip.write(data)
            except Nack:
                self._fail(bus, address, "write", data, errno.EREMOTEIO)
            self.log.append(Transfer(bus, address, "write", data))

    def transfer_read(self, bus: int, address: int, length: int) -> bytes:
        """Deliver one read transfer."""
        with self._lock:
            chip = self._target(bus, address, "read", b"")
            try:
                data = chip.read(length)
            except Nack:
                self._fail(bus, address, "read", b"", errno.EREMOTEIO)
            data = bytes(data[:length]).ljust(length, b"\xff")
            self.log.append(Transfer(bus, address, "read", data))
            return data

    def _target(self, bus: int, address: int, kind: str, data: bytes) -> SimChip:
        check_address(address)
        if bus in self._stuck:
            self._fail(bus, address, kind, data, errno.ETIMEDOUT)
        fault = self._faults.get((bus, address))
        if fault is not None:
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[(bus, address)]
            self._fail(bus, address, kind, data, fault.errno)
        chip = self._chips.get((bus, address))
        if chip is None or (bus, address) in self._removed:
            self._fail(bus, address, kind, data, errno.ENXIO)
        assert chip is not None
        return chip

    def _fail(self, bus: int, address: int, kind: str, data: bytes, err: int) -> NoReturn:
        self.log.append(Transfer(bus, address, kind, data, err))
        label = f"{kind} {data.hex()}" if data else kind
        raise I2CError(err, bus, address, f"{label} (simulated)")


class SimBus:
    """A simulated bus: implements :class:`hal.bus.I2CBus` over a :class:`Board`."""

    def __init__(self, board: Board, number: int) -> None:
        self._board = board
        self._number = number

    @property
    def number(self) -> int:
        """The bus number."""
        return self._number

    def write(self, address: int, data: bytes) -> None:
        """One write transfer."""
        self._board.transfer_write(self._number, address, bytes(data))

    def read(self, address: int, length: int) -> bytes:
        """One read transfer."""
        return self._board.transfer_read(self._number, address, length)

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        """A write transfer then, after a repeated START, a read transfer."""
        with self._board._lock:
            self.write(address, data)
            return self.read(address, length)

    def close(self) -> None:
        """Nothing to release."""
