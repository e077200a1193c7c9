"""What every I2C sensor driver shares: identity, lazy set-up, recovery, closing.

Theory of operation: constructing a driver does no I/O. The first :meth:`read`
(or an explicit :meth:`setup`) identifies the chip and loads what the driver needs
(calibration, serial number). Any HAL error during set-up or a measurement marks
the driver "not ready", so the next :meth:`read` starts again from identification:
a chip that disappeared and came back (power-on reset, registers at defaults) is
picked up again without the caller doing anything. A sensor takes one measurement
at a time (a lock), so it may be read from any thread. Waits go through the injected
``sleep`` so tests run instantly and can assert the durations requested.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import ClassVar

from hal.bus import I2CBus, check_address
from hal.exc import HALError, I2CError, InvalidAddressError, SensorError
from hal.sensor import SensorSpec

Sleep = Callable[[float], None]


class I2CSensor:
    """Base class of the drivers; subclasses fill in the class constants and hooks."""

    PART: ClassVar[str]
    QUANTITIES: ClassVar[tuple[str, ...]]
    ADDRESSES: ClassVar[tuple[int, ...]]

    def __init__(
        self,
        bus: I2CBus,
        address: int | None = None,
        *,
        name: str = "",
        sleep: Sleep = time.sleep,
    ) -> None:
        address = self.ADDRESSES[0] if address is None else check_address(address)
        if address not in self.ADDRESSES:
            allowed = ", ".join(f"0x{a:02x}" for a in self.ADDRESSES)
            raise InvalidAddressError(
                f"{self.PART} cannot sit at 0x{address:02x} (its addresses: {allowed})"
            )
        self._bus = bus
        self._address = address
        self._name = name or SensorSpec(self.PART, bus.number, address).display_name
        self._sleep = sleep
        self._ready = False
        self._closed = False
        # One measurement at a time: a read is several transfers and waits.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name} at i2c-{self._bus.number} 0x{self._address:02x}>"
        )

    @property
    def name(self) -> str:
        """Stable name used in telemetry and the twin."""
        return self._name

    @property
    def part(self) -> str:
        """The part number, e.g. ``BME280``."""
        return self.PART

    @property
    def quantities(self) -> tuple[str, ...]:
        """The keys :meth:`read` returns."""
        return self.QUANTITIES

    @property
    def bus_number(self) -> int:
        """The bus the sensor sits on."""
        return self._bus.number

    @property
    def address(self) -> int:
        """The sensor's 7-bit address."""
        return self._address

    def setup(self) -> None:
        """Identify the chip and load what reading needs; a no-op when already done.

        Raises :class:`hal.exc.I2CError` if the chip does not answer and
        :class:`hal.exc.SensorError` subclasses if it is not the expected part.
        """
        with self._lock:
            self._check_open()
            if self._ready:
                return
            try:
                self._setup()
            except HALError:
                self._ready = False
                raise
            self._ready = True

    def read(self) -> dict[str, float]:
        """Take one measurement and return it keyed by quantity (units in the names)."""
        with self._lock:
            self.setup()
            try:
                return self._measure()
            except HALError:
                self._ready = False
                raise

    def close(self) -> None:
        """Put the chip to sleep where the part supports it; idempotent, never raises
        for a chip that has gone away."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._ready:
                with contextlib.suppress(I2CError):
                    self._power_down()
            self._ready = False

    def _check_open(self) -> None:
        if self._closed:
            raise SensorError(self._name, "sensor is closed")

    # -- hooks for subclasses ---------------------------------------------------------

    def _setup(self) -> None:
        raise NotImplementedError

    def _measure(self) -> dict[str, float]:
        raise NotImplementedError

    def _power_down(self) -> None:
        """Most parts here sleep on their own between one-shot measurements."""
