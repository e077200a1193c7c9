"""ROHM BH1750FVI: ambient light, address 0x23 (ADDR low) or 0x5C (ADDR high).

The chip has no registers, only one-byte opcodes, and no ID. ``start``: power on,
write the measurement-time register (MTreg, as two opcodes), start a one-time
measurement; the wait is the datasheet's maximum measurement time scaled by
MTreg/69; ``collect`` reads the two-byte count. The chip powers down by itself after a one-time
measurement. Conversion (datasheet p.11): ``lux = count / 1.2 * 69 / MTreg``,
halved again in H-resolution mode 2.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from hal.bus import I2CBus
from hal.drivers.base import I2CSensor, Monotonic, Sleep

Mode = Literal["high", "high2", "low"]

OP_POWER_DOWN = 0x00
OP_POWER_ON = 0x01
OP_RESET = 0x07
OP_MTREG_HIGH = 0x40  # | MTreg[7:5]
OP_MTREG_LOW = 0x60  # | MTreg[4:0]
ONE_TIME_OPCODES: dict[str, int] = {"high": 0x20, "high2": 0x21, "low": 0x23}
#: Maximum measurement time at the default MTreg (datasheet: H 180 ms, L 24 ms).
MEASURE_MAX_S: dict[str, float] = {"high": 0.180, "high2": 0.180, "low": 0.024}
DEFAULT_MTREG = 69
MTREG_RANGE = range(31, 255)
COUNTS_PER_LUX = 1.2


def lux_from_count(count: int, mode: Mode = "high", mtreg: int = DEFAULT_MTREG) -> float:
    """Illuminance in lux from the raw 16-bit count (datasheet's formula)."""
    lux = count / COUNTS_PER_LUX * DEFAULT_MTREG / mtreg
    return lux / 2 if mode == "high2" else lux


class BH1750(I2CSensor):
    """A BH1750 on an I2C bus, read in one-time mode."""

    PART: ClassVar[str] = "BH1750"
    QUANTITIES: ClassVar[tuple[str, ...]] = ("illuminance_lux",)
    ADDRESSES: ClassVar[tuple[int, ...]] = (0x23, 0x5C)

    def __init__(
        self,
        bus: I2CBus,
        address: int | None = None,
        *,
        name: str = "",
        sleep: Sleep = time.sleep,
        monotonic: Monotonic = time.monotonic,
        mode: Mode = "high",
        mtreg: int = DEFAULT_MTREG,
    ) -> None:
        super().__init__(bus, address, name=name, sleep=sleep, monotonic=monotonic)
        if mode not in ONE_TIME_OPCODES:
            raise ValueError("mode must be 'high', 'high2' or 'low'")
        if mtreg not in MTREG_RANGE:
            raise ValueError(f"MTreg must be within {MTREG_RANGE.start}..{MTREG_RANGE.stop - 1}")
        self._mode: Mode = mode
        self._mtreg = mtreg

    @property
    def measurement_time_s(self) -> float:
        """The wait requested after starting a measurement (datasheet max x MTreg/69)."""
        return MEASURE_MAX_S[self._mode] * self._mtreg / DEFAULT_MTREG

    def _setup(self) -> None:
        # Power on, then reset the data register: proves something ACKs the opcodes.
        self._op(OP_POWER_ON)
        self._op(OP_RESET)

    def _start(self) -> float:
        self._op(OP_POWER_ON)
        self._op(OP_MTREG_HIGH | (self._mtreg >> 5))
        self._op(OP_MTREG_LOW | (self._mtreg & 0x1F))
        self._op(ONE_TIME_OPCODES[self._mode])
        return self.measurement_time_s

    def _collect(self) -> dict[str, float]:
        # The chip cannot say whether it is done (it answers with the last count): the
        # time alone decides, which is why start() returns the datasheet maximum.
        count = int.from_bytes(self._bus.read(self._address, 2), "big")
        return {"illuminance_lux": lux_from_count(count, self._mode, self._mtreg)}

    def _power_down(self) -> None:
        self._op(OP_POWER_DOWN)

    def _op(self, opcode: int) -> None:
        self._bus.write(self._address, bytes([opcode]))
