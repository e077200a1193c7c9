"""Sensirion SHT4x (SHT40/41/45): temperature and humidity, address 0x44 (-AD1B), 0x45
(SHT40-BD1B) or 0x46.

Single-byte commands: ``start`` sends measure (0xFD / 0xF6 / 0xE0 for high / medium
/ low precision); after the datasheet's maximum duration ``collect`` reads six bytes
(T, CRC, RH, CRC). Set-up issues a soft reset (0x94) and reads the 32-bit serial
number (0x89), which also identifies the family.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from hal.bus import I2CBus
from hal.crc import words_with_crc
from hal.drivers.base import I2CSensor, Monotonic, Sleep
from hal.drivers.sensirion import sht4x_humidity_pct, temperature_c

Precision = Literal["high", "medium", "low"]

MEASURE_COMMANDS: dict[str, bytes] = {"high": b"\xfd", "medium": b"\xf6", "low": b"\xe0"}
#: Maximum measurement duration per precision (datasheet table 4), in seconds.
MEASURE_MAX_S: dict[str, float] = {"high": 0.0083, "medium": 0.0045, "low": 0.0016}
CMD_SOFT_RESET = b"\x94"
CMD_READ_SERIAL = b"\x89"
#: Soft reset time (datasheet: 1 ms max).
SOFT_RESET_S = 0.001
#: The datasheet gives no duration for the serial read; Sensirion's reference
#: pseudo-code waits 10 ms after a command before reading, so do we.
SERIAL_WAIT_S = 0.01


def read_serial(bus: I2CBus, address: int, name: str, sleep: Sleep) -> int:
    """Ask an SHT4x for its serial number (two CRC-checked words)."""
    bus.write(address, CMD_READ_SERIAL)
    sleep(SERIAL_WAIT_S)
    high, low = words_with_crc(name, bus.read(address, 6))
    return (high << 16) | low


class SHT4x(I2CSensor):
    """An SHT4x on an I2C bus."""

    PART: ClassVar[str] = "SHT4x"
    QUANTITIES: ClassVar[tuple[str, ...]] = ("temperature_c", "humidity_pct")
    ADDRESSES: ClassVar[tuple[int, ...]] = (0x44, 0x45, 0x46)

    def __init__(
        self,
        bus: I2CBus,
        address: int | None = None,
        *,
        name: str = "",
        sleep: Sleep = time.sleep,
        monotonic: Monotonic = time.monotonic,
        precision: Precision = "high",
    ) -> None:
        super().__init__(bus, address, name=name, sleep=sleep, monotonic=monotonic)
        if precision not in MEASURE_COMMANDS:
            raise ValueError("precision must be 'high', 'medium' or 'low'")
        self._precision = precision
        self._serial: int | None = None

    @property
    def measurement_time_s(self) -> float:
        """The wait requested after a measurement command (datasheet maximum)."""
        return MEASURE_MAX_S[self._precision]

    @property
    def serial_number(self) -> int | None:
        """The chip's serial number, once set up."""
        return self._serial

    def _setup(self) -> None:
        self._bus.write(self._address, CMD_SOFT_RESET)
        self._sleep(SOFT_RESET_S)
        self._serial = read_serial(self._bus, self._address, self._name, self._sleep)

    def _start(self) -> float:
        self._bus.write(self._address, MEASURE_COMMANDS[self._precision])
        return self.measurement_time_s

    def _collect(self) -> dict[str, float]:
        raw_t, raw_rh = words_with_crc(self._name, self._bus.read(self._address, 6))
        return {"temperature_c": temperature_c(raw_t), "humidity_pct": sht4x_humidity_pct(raw_rh)}
