"""Hardware abstraction layer: I2C buses, sensor drivers, GPIO, register-level mocks.

Importing :mod:`hal` imports nothing heavy: every name below is loaded on first
use (smbus2 only when the real backend opens a bus, gpiozero only when a GPIO
device is created).

Entry points for the agent::

    backend = hal.open_backend("mock")            # or "smbus"; never a silent fallback
    sensors = hal.open_sensors(backend, "auto")    # or [SensorSpec("BME280", 1, 0x76), ...]
    reading = sensors[0].read()                    # {"temperature_c": 22.4, ...}
    led = hal.StatusLed(17, pin_factory=backend.pin_factory)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hal.backend import Backend, MockBackend, open_backend
    from hal.bus import I2CBus
    from hal.cli import register_cli
    from hal.discovery import PARTS, Found, open_sensors, parse_spec, scan
    from hal.exc import (
        BusUnavailableError,
        ChipIdMismatch,
        ConversionNotReady,
        CRCError,
        GPIOError,
        HALError,
        I2CError,
        InvalidAddressError,
        InvalidReadingError,
        MeasurementTimeout,
        PinUnavailableError,
        SensorError,
        UnknownBackendError,
        UnknownPartError,
    )
    from hal.gpio import LedPattern, ReprovisionButton, StatusLed, mock_pin_factory
    from hal.parts import PART_NAMES, canonical_part
    from hal.sensor import UNITS, Sensor, SensorSpec

_LAZY: dict[str, str] = {
    "Backend": "hal.backend",
    "MockBackend": "hal.backend",
    "open_backend": "hal.backend",
    "I2CBus": "hal.bus",
    "register_cli": "hal.cli",
    "PARTS": "hal.discovery",
    "Found": "hal.discovery",
    "open_sensors": "hal.discovery",
    "parse_spec": "hal.discovery",
    "scan": "hal.discovery",
    "BusUnavailableError": "hal.exc",
    "ChipIdMismatch": "hal.exc",
    "ConversionNotReady": "hal.exc",
    "CRCError": "hal.exc",
    "GPIOError": "hal.exc",
    "HALError": "hal.exc",
    "I2CError": "hal.exc",
    "InvalidAddressError": "hal.exc",
    "InvalidReadingError": "hal.exc",
    "MeasurementTimeout": "hal.exc",
    "PinUnavailableError": "hal.exc",
    "SensorError": "hal.exc",
    "UnknownBackendError": "hal.exc",
    "UnknownPartError": "hal.exc",
    "LedPattern": "hal.gpio",
    "ReprovisionButton": "hal.gpio",
    "StatusLed": "hal.gpio",
    "mock_pin_factory": "hal.gpio",
    "PART_NAMES": "hal.parts",
    "canonical_part": "hal.parts",
    "UNITS": "hal.sensor",
    "Sensor": "hal.sensor",
    "SensorSpec": "hal.sensor",
}

__all__ = [
    "PARTS",
    "PART_NAMES",
    "UNITS",
    "Backend",
    "BusUnavailableError",
    "CRCError",
    "ChipIdMismatch",
    "ConversionNotReady",
    "Found",
    "GPIOError",
    "HALError",
    "I2CBus",
    "I2CError",
    "InvalidAddressError",
    "InvalidReadingError",
    "LedPattern",
    "MeasurementTimeout",
    "MockBackend",
    "PinUnavailableError",
    "ReprovisionButton",
    "Sensor",
    "SensorError",
    "SensorSpec",
    "StatusLed",
    "UnknownBackendError",
    "UnknownPartError",
    "canonical_part",
    "mock_pin_factory",
    "open_backend",
    "open_sensors",
    "parse_spec",
    "register_cli",
    "scan",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
