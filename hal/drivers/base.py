"""What every I2C sensor driver shares: identity, lazy set-up, recovery, closing,
and the two-step measurement.

Theory of operation: constructing a driver does no I/O. The first :meth:`start`
or :meth:`read` (or an explicit :meth:`setup`) identifies the chip and loads what
the driver needs (calibration, serial number). Any HAL error during set-up or a
measurement marks the driver "not ready", so the next measurement starts again
from identification: a chip that disappeared and came back (power-on reset,
registers at defaults) is picked up again without the caller doing anything.

A measurement is two steps, so that a caller with an event loop never waits on a
conversion: :meth:`start` sends the command that begins it and returns the
datasheet's *maximum* conversion time (seconds until :meth:`collect` may be
called); :meth:`collect` reads and converts the result. Neither sleeps on the
conversion. Collecting early raises :class:`hal.exc.ConversionNotReady` (with the
time left) and touches no bus: the conversion stays pending. Where the chip can say
it is still busy after the maximum time (BME280 status bit, TMP102 OS bit),
``collect`` raises ``ConversionNotReady`` again with a short poll step, a bounded
number of times, then :class:`hal.exc.MeasurementTimeout`. :meth:`start` while a
conversion is under way disturbs nothing and returns the time left; once that
conversion is done but not collected, :meth:`start` begins a fresh one.
:meth:`read` is the blocking convenience built on the two: start, sleep the
returned time with the injected ``sleep``, collect (sleeping each poll step).

Time comes in as ``monotonic`` (when is a conversion done) and ``sleep`` (how
:meth:`read` and set-up wait), so tests run instantly on a simulated clock and
can assert the durations requested. A sensor takes one measurement at a time (a
lock), so it may be used from any thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from hal.bus import I2CBus, check_address
from hal.exc import (
    ConversionNotReady,
    HALError,
    I2CError,
    InvalidAddressError,
    MeasurementTimeout,
    SensorError,
)
from hal.sensor import SensorSpec

Sleep = Callable[[float], None]
Monotonic = Callable[[], float]


class ChipBusy(Exception):
    """Raised by a driver's ``_collect`` hook when the chip says it is still converting.

    Not a :class:`hal.exc.HALError`: it never leaves the driver. ``poll_s`` is how long
    to wait before asking the chip again.
    """

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s


@dataclass
class _Conversion:
    """A conversion under way: when it is due, how long it has been waited for so far,
    and how many times the chip has said "busy" after that."""

    ready_at: float
    waited_s: float
    polls: int = 0


class I2CSensor:
    """Base class of the drivers; subclasses fill in the class constants and hooks."""

    PART: ClassVar[str]
    QUANTITIES: ClassVar[tuple[str, ...]]
    ADDRESSES: ClassVar[tuple[int, ...]]
    #: How many times ``collect`` may find the chip still busy after the maximum
    #: conversion time before giving up with :class:`hal.exc.MeasurementTimeout`.
    READY_POLLS: ClassVar[int] = 4

    def __init__(
        self,
        bus: I2CBus,
        address: int | None,
        *,
        name: str,
        sleep: Sleep,
        monotonic: Monotonic,
    ) -> None:
        """What every driver takes; the drivers' own constructors give the defaults."""
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
        self._monotonic = monotonic
        self._conversion: _Conversion | None = None
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
            self._setup()  # on an error _ready stays False: the next call starts over
            self._ready = True

    @property
    def measurement_time_s(self) -> float:
        """The datasheet's maximum conversion time with the current settings."""
        raise NotImplementedError

    @property
    def converting(self) -> bool:
        """True between a :meth:`start` and the :meth:`collect` (or error) that ends it."""
        return self._conversion is not None

    def start(self) -> float:
        """Begin one conversion (setting the chip up first if needed) and return the
        seconds until :meth:`collect` may be called: the datasheet's maximum
        conversion time, or what is left of the conversion already under way."""
        with self._lock:
            self._check_open()
            now = self._monotonic()
            conversion = self._conversion
            if conversion is not None and conversion.ready_at > now:
                return conversion.ready_at - now
            self.setup()
            try:
                wait = self._start()
            except HALError:
                self._forget()
                raise
            self._conversion = _Conversion(self._monotonic() + wait, wait)
            return wait

    def collect(self) -> dict[str, float]:
        """Read and convert the result of the conversion :meth:`start` began.

        Raises :class:`hal.exc.ConversionNotReady` (``remaining_s``) when called
        before it is due, without touching the bus; :class:`hal.exc.SensorError`
        when no conversion was started; any other HAL error ends the conversion and
        the next :meth:`start` sets the chip up again.
        """
        with self._lock:
            self._check_open()
            conversion = self._conversion
            if conversion is None:
                raise SensorError(self._name, "no conversion started (call start() first)")
            remaining = conversion.ready_at - self._monotonic()
            if remaining > 0:
                raise ConversionNotReady(self._name, remaining)
            return self._finish(conversion)

    def read(self) -> dict[str, float]:
        """Take one measurement and return it keyed by quantity (units in the names):
        :meth:`start`, sleep the time it returns, collect (blocking)."""
        with self._lock:
            wait = self.start()
            conversion = self._conversion
            assert conversion is not None  # set by start
            while True:
                self._sleep(wait)
                try:
                    return self._finish(conversion)
                except ConversionNotReady as exc:
                    wait = exc.remaining_s

    def _finish(self, conversion: _Conversion) -> dict[str, float]:
        try:
            reading = self._collect()
        except ChipBusy as busy:
            if conversion.polls >= self.READY_POLLS:
                self._forget()
                raise MeasurementTimeout(self._name, conversion.waited_s) from None
            conversion.polls += 1
            conversion.waited_s += busy.poll_s
            conversion.ready_at = self._monotonic() + busy.poll_s
            raise ConversionNotReady(self._name, busy.poll_s) from None
        except HALError:
            self._forget()
            raise
        self._conversion = None
        return reading

    def _forget(self) -> None:
        """After an error: no conversion pending, and the next one sets the chip up again."""
        self._conversion = None
        self._ready = False

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
            self._forget()

    def _check_open(self) -> None:
        if self._closed:
            raise SensorError(self._name, "sensor is closed")

    # -- hooks for subclasses ---------------------------------------------------------

    def _setup(self) -> None:
        raise NotImplementedError

    def _start(self) -> float:
        """Send what begins one conversion; return its maximum duration in seconds."""
        raise NotImplementedError

    def _collect(self) -> dict[str, float]:
        """Read the finished conversion; raise :class:`ChipBusy` if the chip says it is
        still converting."""
        raise NotImplementedError

    def _power_down(self) -> None:
        """Most parts here sleep on their own between one-shot measurements."""
