"""Simulated Sensirion SHT3x (SHT31) and SHT4x (SHT40) at the command level.

Both answer commands with CRC-protected words. A measurement command starts a
measurement that lasts the datasheet's typical duration; a read header before
then (or when no data is pending) is NACKed, as on the parts without clock
stretching. Data is cleared once read. ``corrupt_crc_reads`` flips CRC bytes.

SHT3x: 16-bit commands (single shot 0x2400/0x240B/0x2416, clock-stretching
variants 0x2C06/0x2C0D/0x2C10, soft reset 0x30A2, status 0xF32D, clear status
0x3041). An unknown or truncated command is ACKed but sets status bit 1
("last command not processed") and leaves no data; the next valid command other
than the status read clears it.
SHT4x: 8-bit commands (0xFD/0xF6/0xE0 measure, 0x89 serial, 0x94 soft reset);
an unknown command byte is NACKed.
"""

from __future__ import annotations

from typing import ClassVar

from hal.crc import pack_words
from hal.sim.chip import Nack, SimChip

_FULL = 65535


def _raw(value: float, offset: float, span: float) -> int:
    return min(max(round((value - offset) * _FULL / span), 0), _FULL)


class _SimSensirion(SimChip):
    def __init__(self) -> None:
        super().__init__()
        self._pending: tuple[bytes, float] | None = None
        self.measurements = 0

    def power_on_reset(self) -> None:
        self._pending = None

    def read(self, length: int) -> bytes:
        if self._pending is None or self.now() < self._pending[1]:
            raise Nack
        data = bytearray(self._pending[0])
        self._pending = None
        if self.corrupt_crc_reads > 0:
            self.corrupt_crc_reads -= 1
            for i in range(2, len(data), 3):
                data[i] ^= 0x5A
        return bytes(data)

    def _respond(self, words: list[int], delay_s: float) -> None:
        self._pending = (pack_words(words), self.now() + delay_s)

    def _measure(self, humidity_offset: float, humidity_span: float, delay_s: float) -> None:
        self.measurements += 1
        env = self.attachment.environment.now()
        raw_t = _raw(env.temperature_c, -45.0, 175.0)
        raw_rh = _raw(env.humidity_pct, humidity_offset, humidity_span)
        self._respond([raw_t, raw_rh], delay_s)


class SimSHT3x(_SimSensirion):
    """A simulated SHT31-DIS."""

    PART: ClassVar[str] = "SHT3x"
    variant = "SHT31-DIS"
    #: Typical single-shot durations (high, medium, low repeatability).
    DURATIONS_S: ClassVar[dict[int, float]] = {
        0x2400: 0.0125, 0x240B: 0.0045, 0x2416: 0.0025,
        0x2C06: 0.0, 0x2C0D: 0.0, 0x2C10: 0.0,  # clock stretching: the read waits
    }  # fmt: skip
    STATUS_RESET_DETECTED = 0x0010
    STATUS_COMMAND_FAILED = 0x0002

    def __init__(self) -> None:
        super().__init__()
        self.status = 0

    def power_on_reset(self) -> None:
        """Idle, no data; status: alert pending and reset detected (datasheet table 17)."""
        super().power_on_reset()
        self.status = 0x8000 | self.STATUS_RESET_DETECTED

    def write(self, data: bytes) -> None:
        """One 16-bit command."""
        self._pending = None
        if len(data) != 2:
            self.status |= self.STATUS_COMMAND_FAILED
            return
        command = int.from_bytes(data, "big")
        if command == 0xF32D:
            # Reports on the command before it, so it leaves the "failed" bit alone.
            self._respond([self.status], 0.0)
            return
        self.status &= ~self.STATUS_COMMAND_FAILED
        if command in self.DURATIONS_S:
            self._measure(0.0, 100.0, self.DURATIONS_S[command])
        elif command == 0x30A2:
            self.power_on_reset()
            self.status = self.STATUS_RESET_DETECTED
        elif command == 0x3041:
            self.status &= ~0x8C10
        else:
            self.status |= self.STATUS_COMMAND_FAILED


class SimSHT4x(_SimSensirion):
    """A simulated SHT40 (the -BD1B variant answers at 0x45, -AD1B at 0x44)."""

    PART: ClassVar[str] = "SHT4x"
    variant = "SHT40"
    #: Typical durations of the measurement commands (high, medium, low precision).
    DURATIONS_S: ClassVar[dict[int, float]] = {0xFD: 0.0069, 0xF6: 0.0037, 0xE0: 0.0013}

    def __init__(self, serial_number: int | None = None) -> None:
        super().__init__()
        self._serial = serial_number

    @property
    def serial_number(self) -> int:
        """The 32-bit serial number (seeded if not given)."""
        if self._serial is None:
            self._serial = self.attachment.rng.getrandbits(32)
        return self._serial

    def write(self, data: bytes) -> None:
        """One 8-bit command; unknown ones are NACKed."""
        self._pending = None
        if len(data) != 1:
            raise Nack
        command = data[0]
        if command in self.DURATIONS_S:
            self._measure(-6.0, 125.0, self.DURATIONS_S[command])
        elif command == 0x89:
            self._respond([self.serial_number >> 16, self.serial_number & 0xFFFF], 0.0005)
        elif command == 0x94:
            self.power_on_reset()
        else:
            raise Nack
