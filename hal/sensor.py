"""The sensor interface the agent sees.

Every driver in :mod:`hal.drivers` satisfies :class:`Sensor`. A reading is a mapping
from a quantity named with its unit (``temperature_c``, ``humidity_pct``,
``pressure_hpa``, ``illuminance_lux``, ...) to a float, so units never get lost
between the register and the telemetry message.

A measurement is two steps for callers that must not block (an event loop arms a
timer for the seconds :meth:`Sensor.start` returns, then calls
:meth:`Sensor.collect`); :meth:`Sensor.read` does both, sleeping in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: The unit of each quantity a driver may report, keyed by the quantity's name.
UNITS: Mapping[str, str] = {
    "temperature_c": "degC",
    "humidity_pct": "%RH",
    "pressure_hpa": "hPa",
    "illuminance_lux": "lx",
    "voltage_v": "V",
}


@dataclass(frozen=True)
class SensorSpec:
    """Where a sensor sits: which part, on which bus, at which 7-bit address.

    ``name`` is how telemetry and the twin refer to it; by default ``{part}@{bus}:0x{addr:02x}``.
    """

    part: str
    bus: int
    address: int
    name: str = ""

    @property
    def display_name(self) -> str:
        """``name``, or ``{part}@{bus}:0x{addr:02x}`` in lower case when it is empty."""
        return self.name or f"{self.part.lower()}@{self.bus}:0x{self.address:02x}"


@runtime_checkable
class Sensor(Protocol):
    """One physical sensor behind a driver."""

    @property
    def name(self) -> str:
        """Stable name used in telemetry and the twin."""
        ...

    @property
    def part(self) -> str:
        """The part number, e.g. ``BME280``."""
        ...

    @property
    def quantities(self) -> tuple[str, ...]:
        """The quantities :meth:`read` returns, each a key of :data:`UNITS`."""
        ...

    def start(self) -> float:
        """Begin one conversion without waiting for it; return the seconds until
        :meth:`collect` may be called (the datasheet's maximum conversion time)."""
        ...

    def collect(self) -> dict[str, float]:
        """The result of the conversion :meth:`start` began, without waiting;
        :class:`hal.exc.ConversionNotReady` (with ``remaining_s``) if called early."""
        ...

    def read(self) -> dict[str, float]:
        """Take one measurement, blocking for the conversion (start, sleep, collect);
        raise :class:`hal.exc.HALError` (or a subclass) on failure."""
        ...

    def close(self) -> None:
        """Release the sensor (put it to sleep where the part supports it)."""
        ...
