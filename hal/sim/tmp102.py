"""Simulated TI TMP102 at the register level.

A pointer register selects temperature (0, read-only), configuration (1),
T_LOW (2) or T_HIGH (3); a write is the pointer optionally followed by the two
bytes of the selected register. Power-up: continuous conversion at 4 Hz, config
0x60A0, T_LOW 75 °C, T_HIGH 80 °C, temperature 0 until the first conversion
(26 ms typical) completes. In shutdown (SD=1) writing OS=1 starts one conversion;
OS reads 0 while converting and 1 afterwards. R1:R0 always read 11, AL is
read-only. Temperatures are encoded 12-bit (13-bit when EM=1).
"""

from __future__ import annotations

from typing import ClassVar

from hal.sim.chip import SimChip

CONVERSION_TYPICAL_S = 0.026
_PERIODS_S = {0: 4.0, 1: 1.0, 2: 0.25, 3: 0.125}  # CR1:CR0 -> seconds between conversions


def encode_temperature(temperature_c: float, extended: bool) -> int:
    """The temperature register value for ``temperature_c``."""
    bits = 13 if extended else 12
    value = min(max(round(temperature_c / 0.0625), -(1 << (bits - 1))), (1 << (bits - 1)) - 1)
    value &= (1 << bits) - 1
    return (value << 3) | 1 if extended else value << 4


class SimTMP102(SimChip):
    """A simulated TMP102."""

    PART: ClassVar[str] = "TMP102"
    variant = "TMP102"

    def __init__(self) -> None:
        super().__init__()
        self.config = bytearray(b"\x60\xa0")
        self.temperature = 0
        self.t_low = 0x4B00
        self.t_high = 0x5000
        self._pointer = 0
        self._next_conversion: float | None = None
        self._one_shot_done: float | None = None
        self._one_shot_ready = False
        self.measurements = 0

    def power_on_reset(self) -> None:
        """Continuous mode, defaults, first conversion under way."""
        self.config = bytearray(b"\x60\xa0")
        self.temperature = 0
        self.t_low, self.t_high = 0x4B00, 0x5000
        self._pointer = 0
        self._one_shot_done = None
        self._one_shot_ready = False
        self._next_conversion = self.now() + CONVERSION_TYPICAL_S

    @property
    def shutdown(self) -> bool:
        """SD bit."""
        return bool(self.config[0] & 0x01)

    def write(self, data: bytes) -> None:
        """Pointer byte, then optionally the register's two bytes."""
        self._advance()
        if not data:
            return
        self._pointer = data[0] & 0x03
        if len(data) < 3:
            return
        value = bytes(data[1:3])
        if self._pointer == 1:
            self._write_config(value)
        elif self._pointer == 2:
            self.t_low = int.from_bytes(value, "big")
        elif self._pointer == 3:
            self.t_high = int.from_bytes(value, "big")

    def read(self, length: int) -> bytes:
        """The selected register, MSB first."""
        self._advance()
        if self._pointer == 0:
            value = self.temperature
        elif self._pointer == 1:
            value = int.from_bytes(self._config_as_read(), "big")
        elif self._pointer == 2:
            value = self.t_low
        else:
            value = self.t_high
        return value.to_bytes(2, "big")[:length]

    def _write_config(self, value: bytes) -> None:
        was_shutdown = self.shutdown
        start_one_shot = bool(value[0] & 0x80)
        self.config[0] = (value[0] & 0x1F) | 0x60  # OS not stored, R1:R0 read-only
        self.config[1] = (value[1] & 0xD0) | (self.config[1] & 0x20)  # AL read-only
        if self.shutdown:
            self._next_conversion = None
            if start_one_shot and self._one_shot_done is None:
                self._one_shot_done = self.now() + CONVERSION_TYPICAL_S
                self._one_shot_ready = False
        elif was_shutdown:
            self._next_conversion = self.now() + CONVERSION_TYPICAL_S

    def _config_as_read(self) -> bytes:
        os_bit = 0x80 if self.shutdown and self._one_shot_ready else 0
        return bytes([self.config[0] | os_bit, self.config[1]])

    def _advance(self) -> None:
        now = self.now()
        if self._one_shot_done is not None and now >= self._one_shot_done:
            self._convert()
            self._one_shot_done = None
            self._one_shot_ready = True
        if self._next_conversion is not None and now >= self._next_conversion:
            self._convert()
            period = _PERIODS_S[self.config[1] >> 6]
            self._next_conversion = now + period

    def _convert(self) -> None:
        self.measurements += 1
        env = self.attachment.environment.now()
        self.temperature = encode_temperature(env.temperature_c, bool(self.config[1] & 0x10))
