"""Bosch BME280: temperature, humidity and pressure (chip id 0x60, address 0x76 or 0x77).

The register protocol and the compensation live in :mod:`hal.drivers.bosch`, shared
with the BMP280; this module only says what makes the BME280 itself.
"""

from __future__ import annotations

from typing import ClassVar

from hal.drivers.bosch import BoschSensor

CHIP_ID = 0x60


class BME280(BoschSensor):
    """A BME280 on an I2C bus, read in forced mode."""

    PART: ClassVar[str] = "BME280"
    QUANTITIES: ClassVar[tuple[str, ...]] = ("temperature_c", "humidity_pct", "pressure_hpa")
    CHIP_IDS: ClassVar[tuple[int, ...]] = (CHIP_ID,)
    HAS_HUMIDITY: ClassVar[bool] = True
