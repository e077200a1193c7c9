"""Sensirion SHT3x (SHT30/SHT31/SHT35): temperature and humidity, address 0x44 or 0x45.

Single-shot mode without clock stretching: ``start`` writes the 16-bit measurement
command; after the datasheet's maximum measurement duration ``collect`` reads six
bytes (T, CRC, RH, CRC). Reading before the measurement is done gets a NACK on the
read header, so the wait is not optional (``collect`` refuses to read early). Every
word's CRC-8 is checked. Set-up issues a soft reset and reads the status register (a
CRC-protected word): a chip that answers it with a valid checksum is an SHT3x-family
sensor.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from hal.bus import I2CBus
from hal.crc import words_with_crc
from hal.drivers.base import I2CSensor, Monotonic, Sleep
from hal.drivers.sensirion import sht3x_humidity_pct, temperature_c

Repeatability = Literal["high", "medium", "low"]

#: Single-shot commands, clock stretching disabled (datasheet table 9).
MEASURE_COMMANDS: dict[str, bytes] = {
    "high": b"\x24\x00",
    "medium": b"\x24\x0b",
    "low": b"\x24\x16",
}
#: Maximum measurement duration per repeatability (datasheet table 4), in seconds.
MEASURE_MAX_S: dict[str, float] = {"high": 0.0155, "medium": 0.0065, "low": 0.0045}
CMD_SOFT_RESET = b"\x30\xa2"
CMD_READ_STATUS = b"\xf3\x2d"
#: Soft reset time (datasheet table 4: 1.5 ms max).
SOFT_RESET_S = 0.0015


class SHT3x(I2CSensor):
    """An SHT3x on an I2C bus."""

    PART: ClassVar[str] = "SHT3x"
    QUANTITIES: ClassVar[tuple[str, ...]] = ("temperature_c", "humidity_pct")
    ADDRESSES: ClassVar[tuple[int, ...]] = (0x44, 0x45)

    def __init__(
        self,
        bus: I2CBus,
        address: int | None = None,
        *,
        name: str = "",
        sleep: Sleep = time.sleep,
        monotonic: Monotonic = time.monotonic,
        repeatability: Repeatability = "high",
    ) -> None:
        super().__init__(bus, address, name=name, sleep=sleep, monotonic=monotonic)
        if repeatability not in MEASURE_COMMANDS:
            raise ValueError("repeatability must be 'high', 'medium' or 'low'")
        self._repeatability = repeatability
        self._status: int | None = None

    @property
    def measurement_time_s(self) -> float:
        """The wait requested after a measurement command (datasheet maximum)."""
        return MEASURE_MAX_S[self._repeatability]

    @property
    def status(self) -> int | None:
        """The status register read at set-up."""
        return self._status

    def _setup(self) -> None:
        self._bus.write(self._address, CMD_SOFT_RESET)
        self._sleep(SOFT_RESET_S)
        self._bus.write(self._address, CMD_READ_STATUS)
        (self._status,) = words_with_crc(self._name, self._bus.read(self._address, 3))

    def _start(self) -> float:
        self._bus.write(self._address, MEASURE_COMMANDS[self._repeatability])
        return self.measurement_time_s

    def _collect(self) -> dict[str, float]:
        raw_t, raw_rh = words_with_crc(self._name, self._bus.read(self._address, 6))
        return {"temperature_c": temperature_c(raw_t), "humidity_pct": sht3x_humidity_pct(raw_rh)}
