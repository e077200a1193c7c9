"""Sensirion SHT3x / SHT4x conversions (pure) and what their drivers share.

Both families send each 16-bit word followed by its CRC-8 (:mod:`hal.crc`) and
convert with linear formulas from the datasheets:

* temperature (both): ``T = -45 + 175 * S_T / (2^16 - 1)`` °C
* SHT3x humidity:     ``RH = 100 * S_RH / (2^16 - 1)`` %RH
* SHT4x humidity:     ``RH = -6 + 125 * S_RH / (2^16 - 1)`` %RH, cropped to 0..100
"""

from __future__ import annotations

FULL_SCALE = 65535


def temperature_c(raw: int) -> float:
    """Temperature in °C from a raw SHT3x/SHT4x temperature word."""
    return -45.0 + 175.0 * raw / FULL_SCALE


def sht3x_humidity_pct(raw: int) -> float:
    """Relative humidity in %RH from a raw SHT3x humidity word."""
    return 100.0 * raw / FULL_SCALE


def sht4x_humidity_pct(raw: int) -> float:
    """Relative humidity in %RH from a raw SHT4x humidity word, cropped to 0..100
    as the datasheet prescribes (the linear range goes from -6 to 119)."""
    return min(max(-6.0 + 125.0 * raw / FULL_SCALE, 0.0), 100.0)
