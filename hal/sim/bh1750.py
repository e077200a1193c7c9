"""Simulated ROHM BH1750FVI at the opcode level.

States: power down / power on / measuring. Measurement opcodes are accepted only
when powered on (the datasheet's flow: power on, then measure); one-time modes
power down at the end of the measurement, continuous modes start the next one.
Until the first measurement completes the data register keeps its old value
(0 after reset). Measurement takes the datasheet's typical time (H 120 ms, L 16 ms)
scaled by MTreg/69; the count is ``lux * 1.2 * MTreg/69`` (doubled in H-mode 2).
"""

from __future__ import annotations

from typing import ClassVar

from hal.sim.chip import SimChip

_TYPICAL_S = {0x10: 0.120, 0x11: 0.120, 0x13: 0.016, 0x20: 0.120, 0x21: 0.120, 0x23: 0.016}


class SimBH1750(SimChip):
    """A simulated BH1750FVI."""

    PART: ClassVar[str] = "BH1750"
    variant = "BH1750FVI"

    def __init__(self) -> None:
        super().__init__()
        self.powered = False
        self.mtreg = 69
        self.data = 0
        self._mode: int | None = None
        self._done_at: float | None = None
        self.measurements = 0

    def power_on_reset(self) -> None:
        """Power down, MTreg 69, data 0."""
        self.powered = False
        self.mtreg = 69
        self.data = 0
        self._mode = None
        self._done_at = None

    def write(self, data: bytes) -> None:
        """Each byte is an opcode."""
        for op in data:
            self._advance()
            self._opcode(op)

    def read(self, length: int) -> bytes:
        """The 16-bit data register, big-endian."""
        self._advance()
        return self.data.to_bytes(2, "big")[:length]

    def _opcode(self, op: int) -> None:
        if op == 0x00:
            self.powered = False
            self._mode = None
            self._done_at = None
        elif op == 0x01:
            self.powered = True
        elif op == 0x07:
            if self.powered:
                self.data = 0
        elif op in _TYPICAL_S:
            if self.powered:
                self._mode = op
                self._done_at = self.now() + _TYPICAL_S[op] * self.mtreg / 69
        elif op & 0xF8 == 0x40:
            self.mtreg = (self.mtreg & 0x1F) | ((op & 0x07) << 5)
        elif op & 0xE0 == 0x60:
            self.mtreg = (self.mtreg & 0xE0) | (op & 0x1F)

    def _advance(self) -> None:
        if self._done_at is None or self._mode is None or self.now() < self._done_at:
            return
        self.measurements += 1
        lux = self.attachment.environment.now().illuminance_lux
        count = lux * 1.2 * self.mtreg / 69 * (2 if self._mode in (0x11, 0x21) else 1)
        self.data = min(max(round(count), 0), 0xFFFF)
        if self._mode in (0x20, 0x21, 0x23):
            self.powered = False
            self._mode = None
            self._done_at = None
        else:
            self._done_at += _TYPICAL_S[self._mode] * self.mtreg / 69
