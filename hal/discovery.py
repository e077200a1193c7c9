"""Which parts exist, finding them on buses, and opening the configured sensors.

:data:`PARTS` maps part names to driver classes; :func:`canonical_part` (from
:mod:`hal.parts`, which imports no driver) accepts the usual aliases (SHT31 is an
SHT3x, SHT40 an SHT4x). :func:`scan` probes only the addresses a supported
part can have, and identifies what answers:

* 0x76/0x77: chip id register 0xD0 (0x60 BME280, 0x58 BMP280);
* 0x44/0x45/0x46: SHT4x serial-number command (0x89), else SHT3x status
  command (0xF32D), each answer CRC-checked (an answer that fails its CRC is
  reported as unidentified, not hidden);
* 0x48..0x4B: TMP102 configuration register (read-only R1:R0 = 11);
* 0x23/0x5C: BH1750 power-down opcode ACKed (the part has no ID; "presumed").

A NACK means nobody is there; any other bus error (stuck bus, EIO) is raised,
since a scan that hides a broken bus would report an empty board.
:func:`open_sensors` turns specs (or ``"auto"``: whatever :func:`scan` finds)
into driver instances, and by default proves each is present and correct.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hal.bus import check_address, read_register, read_u8
from hal.crc import words_with_crc
from hal.drivers.base import I2CSensor, Sleep
from hal.drivers.bh1750 import BH1750
from hal.drivers.bme280 import BME280
from hal.drivers.bmp280 import BMP280
from hal.drivers.sht3x import CMD_READ_STATUS, SHT3x
from hal.drivers.sht4x import SHT4x, read_serial
from hal.drivers.tmp102 import REG_CONFIG, TMP102, is_tmp102_config
from hal.exc import CRCError, I2CError, InvalidAddressError, UnknownPartError
from hal.parts import canonical_part
from hal.sensor import Sensor, SensorSpec

if TYPE_CHECKING:
    from hal.backend import Backend
    from hal.bus import I2CBus

__all__ = [
    "PARTS",
    "Found",
    "canonical_part",
    "known_addresses",
    "open_sensors",
    "parse_spec",
    "scan",
]

#: Driver class by canonical part name (the names of :data:`hal.parts.PART_NAMES`).
PARTS: dict[str, type[I2CSensor]] = {
    cls.PART: cls for cls in (BME280, BMP280, SHT3x, SHT4x, BH1750, TMP102)
}

_SPEC = re.compile(r"^\s*([A-Za-z0-9_]+)\s*@\s*(\d+)\s*:\s*(0[xX][0-9a-fA-F]+|\d+)\s*$")


@dataclass(frozen=True)
class Found:
    """Something that answered a scan: ``part`` is None when it is not identified."""

    bus: int
    address: int
    part: str | None
    detail: str

    def spec(self) -> SensorSpec:
        """The spec to open this part with (only for identified parts)."""
        if self.part is None:
            raise UnknownPartError(f"unidentified@{self.bus}:0x{self.address:02x}", tuple(PARTS))
        return SensorSpec(self.part, self.bus, self.address)


def parse_spec(text: str) -> SensorSpec:
    """Parse ``PART@BUS:ADDR`` (address in hex ``0x76`` or decimal) into a spec."""
    match = _SPEC.match(text)
    if not match:
        raise ValueError(f"sensor spec {text!r} is not PART@BUS:0xADDR (e.g. BME280@1:0x76)")
    part, bus, address = match.groups()
    return SensorSpec(canonical_part(part), int(bus), check_address(int(address, 0)))


def known_addresses() -> tuple[int, ...]:
    """Every address some supported part can have."""
    return tuple(sorted({a for cls in PARTS.values() for a in cls.ADDRESSES}))


def scan(backend: Backend, buses: Sequence[int]) -> list[Found]:
    """Probe the known addresses on ``buses`` and identify what answers."""
    found: list[Found] = []
    for number in buses:
        bus = backend.bus(number)
        for address in known_addresses():
            result = _probe(bus, address, backend.sleep)
            if result is not None:
                found.append(result)
    return found


def open_sensors(
    backend: Backend,
    specs: Sequence[SensorSpec] | Literal["auto"],
    buses: Sequence[int] = (1,),
    *,
    require_present: bool = True,
) -> list[Sensor]:
    """Create a driver for each spec (or for each part :func:`scan` finds on ``buses``).

    With ``require_present`` (the default) each sensor is set up now, so a missing
    chip or a wrong part fails here with a clear :class:`hal.exc.HALError`; without
    it, absent sensors are returned anyway and their ``read()`` raises until the
    chip answers (useful to start with a sensor unplugged).
    """
    if specs == "auto":
        specs = [f.spec() for f in scan(backend, buses) if f.part is not None]
    seen: dict[tuple[int, int], SensorSpec] = {}
    sensors: list[Sensor] = []
    for spec in specs:
        key = (spec.bus, spec.address)
        if key in seen:
            raise InvalidAddressError(
                f"{spec.display_name} and {seen[key].display_name} are both configured "
                f"at i2c-{spec.bus} 0x{spec.address:02x}"
            )
        seen[key] = spec
        driver = PARTS[canonical_part(spec.part)]
        sensor = driver(
            backend.bus(spec.bus),
            spec.address,
            name=spec.display_name,
            sleep=backend.sleep,
            monotonic=backend.monotonic,
        )
        if require_present:
            sensor.setup()
        sensors.append(sensor)
    return sensors


def _probe(bus: I2CBus, address: int, sleep: Sleep) -> Found | None:
    number = bus.number
    try:
        if address in (0x76, 0x77):
            chip_id = read_u8(bus, address, 0xD0)
            for cls in (BME280, BMP280):
                if chip_id in cls.CHIP_IDS:
                    return Found(number, address, cls.PART, f"chip id 0x{chip_id:02x}")
            return Found(number, address, None, f"chip id 0x{chip_id:02x}: not a BME280/BMP280")
        if address in (0x44, 0x45, 0x46):
            return _probe_sensirion(bus, address, sleep)
        if address in TMP102.ADDRESSES:
            config = read_register(bus, address, REG_CONFIG, 2)
            if is_tmp102_config(config):
                return Found(number, address, "TMP102", f"config register 0x{config.hex()}")
            return Found(number, address, None, f"config 0x{config.hex()}: not a TMP102")
        if address in BH1750.ADDRESSES:
            bus.write(address, b"\x00")  # power down: harmless, and the part has no ID
            return Found(number, address, "BH1750", "no ID register; presumed from the address")
    except I2CError as exc:
        if exc.is_nack:
            return None
        raise
    return None


def _probe_sensirion(bus: I2CBus, address: int, sleep: Sleep) -> Found | None:
    number = bus.number
    name = f"probe@{number}:0x{address:02x}"
    garbled: CRCError | None = None  # something answered, but not with a valid word
    if address in SHT4x.ADDRESSES:
        try:
            serial = read_serial(bus, address, name, sleep)
            return Found(number, address, "SHT4x", f"serial number 0x{serial:08x}")
        except CRCError as exc:
            garbled = exc
        except I2CError as exc:
            if not exc.is_nack:
                raise
    if address in SHT3x.ADDRESSES:
        try:
            bus.write(address, CMD_READ_STATUS)
            (status,) = words_with_crc(name, bus.read(address, 3))
            return Found(number, address, "SHT3x", f"status register 0x{status:04x}")
        except CRCError as exc:
            garbled = exc
        except I2CError as exc:
            if not exc.is_nack or garbled is None:
                raise
    if garbled is not None:
        return Found(number, address, None, f"answers, but {garbled}")
    return None
