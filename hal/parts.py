"""The supported part names, without their drivers.

A light table for callers that only need to validate a part name (the agent's
configuration loader): importing this module imports no driver. :data:`PART_NAMES`
lists the canonical names; :data:`ALIASES` the other names accepted for them
(case-insensitive). :mod:`hal.discovery` maps the same names to driver classes in
``PARTS``; a test holds the two tables equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from hal.exc import UnknownPartError

#: Canonical part names, one per driver (``hal.drivers.<part>.<PART>``).
PART_NAMES: tuple[str, ...] = ("BME280", "BMP280", "SHT3x", "SHT4x", "BH1750", "TMP102")

#: Other names accepted for a part (lower case), mapped to the canonical name.
ALIASES: Mapping[str, str] = MappingProxyType({
    "sht30": "SHT3x", "sht31": "SHT3x", "sht35": "SHT3x",
    "sht40": "SHT4x", "sht41": "SHT4x", "sht45": "SHT4x",
    "bh1750fvi": "BH1750",
})  # fmt: skip

_BY_LOWER: Mapping[str, str] = MappingProxyType(
    {**ALIASES, **{name.lower(): name for name in PART_NAMES}}
)


def canonical_part(part: str) -> str:
    """The canonical name of ``part`` (``"sht31"`` -> ``"SHT3x"``); raises
    :class:`hal.exc.UnknownPartError` when no driver handles it."""
    try:
        return _BY_LOWER[part.lower()]
    except KeyError:
        raise UnknownPartError(part, PART_NAMES) from None
