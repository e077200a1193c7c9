"""TI TMP102: temperature, address 0x48..0x4B.

Registers behind a pointer byte: 0 temperature, 1 configuration, 2 T_LOW, 3 T_HIGH,
all 16-bit big-endian. The driver keeps the chip in shutdown (0.5 µA) and takes
one-shot conversions: ``start`` writes OS=1 with SD=1; after the datasheet's maximum
conversion time (35 ms) ``collect`` confirms OS reads 1 again ("conversion ready";
else it polls, bounded), then reads the temperature register. Temperature (datasheet
tables 5 and 6): 12-bit two's complement left-justified, 0.0625 °C per LSB; 13-bit
when bit 0 (EM) is set.

There is no ID register; set-up checks the read-only converter-resolution bits
R1:R0, which always read 11 on a TMP102 (an ADS1115 at the same addresses reads 00).
"""

from __future__ import annotations

import time
from typing import ClassVar

from hal.bus import I2CBus, read_register
from hal.drivers.base import ChipBusy, I2CSensor, Monotonic, Sleep
from hal.exc import ChipIdMismatch

REG_TEMPERATURE = 0x00
REG_CONFIG = 0x01
CONFIG_OS = 0x80  # byte 1
CONFIG_RESOLUTION = 0x60  # byte 1, R1:R0, read-only, always 11
CONFIG_SD = 0x01  # byte 1
CONFIG_BYTE2_DEFAULT = 0xA0  # CR = 4 Hz, EM = 0 (power-up value)
#: Maximum conversion time (datasheet electrical characteristics: 26 ms typ, 35 ms max).
CONVERSION_MAX_S = 0.035
READY_POLLS = 4
READY_POLL_S = 0.0035
LSB_C = 0.0625


def temperature_from_register(raw: int) -> float:
    """°C from the 16-bit temperature register (12-bit, or 13-bit when bit 0 is set)."""
    if raw & 0x0001:
        value, bits = raw >> 3, 13
    else:
        value, bits = raw >> 4, 12
    if value & (1 << (bits - 1)):
        value -= 1 << bits
    return value * LSB_C


class TMP102(I2CSensor):
    """A TMP102 on an I2C bus, read with one-shot conversions."""

    PART: ClassVar[str] = "TMP102"
    QUANTITIES: ClassVar[tuple[str, ...]] = ("temperature_c",)
    ADDRESSES: ClassVar[tuple[int, ...]] = (0x48, 0x49, 0x4A, 0x4B)
    READY_POLLS: ClassVar[int] = READY_POLLS

    def __init__(
        self,
        bus: I2CBus,
        address: int | None = None,
        *,
        name: str = "",
        sleep: Sleep = time.sleep,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        super().__init__(bus, address, name=name, sleep=sleep, monotonic=monotonic)

    @property
    def measurement_time_s(self) -> float:
        """The wait requested after starting a one-shot conversion."""
        return CONVERSION_MAX_S

    def _setup(self) -> None:
        config = read_register(self._bus, self._address, REG_CONFIG, 2)
        if config[0] & CONFIG_RESOLUTION != CONFIG_RESOLUTION:
            raise ChipIdMismatch(
                self._name,
                CONFIG_RESOLUTION,
                config[0] & CONFIG_RESOLUTION,
                what="resolution bits R1:R0",
            )
        self._write_config(CONFIG_SD)

    def _start(self) -> float:
        self._write_config(CONFIG_SD | CONFIG_OS)
        return CONVERSION_MAX_S

    def _collect(self) -> dict[str, float]:
        if not read_register(self._bus, self._address, REG_CONFIG, 2)[0] & CONFIG_OS:
            raise ChipBusy(READY_POLL_S)
        raw = int.from_bytes(read_register(self._bus, self._address, REG_TEMPERATURE, 2), "big")
        return {"temperature_c": temperature_from_register(raw)}

    def _write_config(self, byte1: int) -> None:
        self._bus.write(self._address, bytes([REG_CONFIG, byte1, CONFIG_BYTE2_DEFAULT]))


def is_tmp102_config(config: bytes) -> bool:
    """True when a configuration register read looks like a TMP102's (R1:R0 = 11)."""
    return len(config) == 2 and config[0] & CONFIG_RESOLUTION == CONFIG_RESOLUTION
