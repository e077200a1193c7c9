"""Bosch BMP280: temperature and pressure, no humidity (chip id 0x58; 0x56/0x57 on
engineering samples), address 0x76 or 0x77.

Same registers and compensation as the BME280 (:mod:`hal.drivers.bosch`), minus the
humidity registers.
"""

from __future__ import annotations

from typing import ClassVar

from hal.drivers.bosch import BoschSensor

CHIP_ID = 0x58


class BMP280(BoschSensor):
    """A BMP280 on an I2C bus, read in forced mode."""

    PART: ClassVar[str] = "BMP280"
    QUANTITIES: ClassVar[tuple[str, ...]] = ("temperature_c", "pressure_hpa")
    CHIP_IDS: ClassVar[tuple[int, ...]] = (CHIP_ID, 0x56, 0x57)
    HAS_HUMIDITY: ClassVar[bool] = False
