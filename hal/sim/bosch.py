"""Simulated Bosch BME280 and BMP280: register map, calibration NVM, forced mode.

The chip holds the real register map (chip id 0xD0, reset 0xE0, ctrl_hum 0xF2,
status 0xF3, ctrl_meas 0xF4, config 0xF5, data 0xF7..0xFE) and its calibration
NVM (0x88..0xA1, 0xE1..0xE7). Writes are (register, value) pairs, as on the real
part (no auto-increment when writing); reads auto-increment from the pointer.
Writing forced mode to ctrl_meas starts a measurement that takes the datasheet's
typical time; until then status bit 3 reads 1 and the data registers keep their
old contents, then the mode returns to sleep. ctrl_hum only takes effect on the
next ctrl_meas write, as the datasheet says. Skipped measurements read
0x80000 / 0x8000. The IIR filter is not simulated (its setting is stored).

Raw ADC values are produced by inverting the datasheet's *floating-point*
compensation (section 8.1) by bisection, while the driver uses the integer
compensation: the two agree only if both are right.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import ClassVar

from hal.drivers.bosch import Calibration
from hal.sim.chip import SimChip

CHIP_ID_BME280 = 0x60
CHIP_ID_BMP280 = 0x58

#: The BMP280 datasheet's worked-example calibration (section 3.12).
DATASHEET_CALIBRATION = Calibration(
    27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000
)
#: A plausible BME280 calibration (temperature/pressure from the datasheet example,
#: humidity values typical of production parts).
BME280_CALIBRATION = Calibration(
    27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
    dig_h1=75, dig_h2=362, dig_h3=0, dig_h4=313, dig_h5=50, dig_h6=30,
)  # fmt: skip

_FACTORS = (0, 1, 2, 4, 8, 16)  # oversampling by register code (5..7 all mean x16)


def _factor(code: int) -> int:
    return _FACTORS[min(code, 5)]


# -- the datasheet's floating-point compensation (section 8.1) ---------------------------


def float_t_fine(cal: Calibration, adc_t: float) -> float:
    """t_fine from the floating-point formula."""
    var1 = (adc_t / 16384.0 - cal.dig_t1 / 1024.0) * cal.dig_t2
    var2 = ((adc_t / 131072.0 - cal.dig_t1 / 8192.0) ** 2) * cal.dig_t3
    return var1 + var2


def float_pressure_pa(cal: Calibration, adc_p: float, t_fine: float) -> float:
    """Pressure in Pa from the floating-point formula."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.dig_p6 / 32768.0
    var2 = var2 + var1 * cal.dig_p5 * 2.0
    var2 = var2 / 4.0 + cal.dig_p4 * 65536.0
    var1 = (cal.dig_p3 * var1 * var1 / 524288.0 + cal.dig_p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.dig_p1
    if var1 == 0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.dig_p9 * p * p / 2147483648.0
    var2 = p * cal.dig_p8 / 32768.0
    return p + (var1 + var2 + cal.dig_p7) / 16.0


def float_humidity_pct(cal: Calibration, adc_h: float, t_fine: float) -> float:
    """Relative humidity from the floating-point formula (unclamped)."""
    h = t_fine - 76800.0
    h = (adc_h - (cal.dig_h4 * 64.0 + cal.dig_h5 / 16384.0 * h)) * (
        cal.dig_h2
        / 65536.0
        * (1.0 + cal.dig_h6 / 67108864.0 * h * (1.0 + cal.dig_h3 / 67108864.0 * h))
    )
    return h * (1.0 - cal.dig_h1 * h / 524288.0)


#: Newton steps :func:`_bisect` tries before it bisects.
_NEWTON_STEPS = 6


def _bisect(f: Callable[[int], float], target: float, low: int, high: int) -> int:
    """The integer x in [low, high] for which the monotonic f(x) is nearest ``target``.

    The compensation formulas are nearly linear, so a few Newton steps on the integers
    usually find the bracket ``x, x + 1`` around ``target`` (about 6 evaluations instead
    of about 24); the answer is the one bisection gives, which runs whenever they do not.
    """
    f_low, f_high = f(low), f(high)
    increasing = f_high >= f_low
    if f_high != f_low:
        x = low + int((target - f_low) / (f_high - f_low) * (high - low))
        for _ in range(_NEWTON_STEPS):
            x = min(max(x, low), high - 1)
            f_x, f_next = f(x), f(x + 1)
            if (f_x < target) == increasing and (f_next < target) != increasing:
                return x if abs(f_x - target) <= abs(f_next - target) else x + 1
            if f_next == f_x:
                break
            step = (target - f_x) / (f_next - f_x)
            x += int(step) if abs(step) >= 1 else (1 if step > 0 else -1)
    lo, hi = low, high
    for _ in range(40):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return lo if abs(f(lo) - target) <= abs(f(hi) - target) else hi


def raw_values(
    cal: Calibration, temperature_c: float, pressure_hpa: float, humidity_pct: float | None
) -> tuple[int, int, int | None]:
    """ADC values (adc_T, adc_P, adc_H) that the float compensation maps to the inputs."""
    adc_t = _bisect(lambda x: float_t_fine(cal, x) / 5120.0, temperature_c, 0, 0xFFFFF)
    t_fine = float_t_fine(cal, adc_t)
    adc_p = _bisect(lambda x: float_pressure_pa(cal, x, t_fine), pressure_hpa * 100.0, 0, 0xFFFFF)
    adc_h = None
    if humidity_pct is not None:
        adc_h = _bisect(lambda x: float_humidity_pct(cal, x, t_fine), humidity_pct, 0, 0xFFFF)
    return adc_t, adc_p, adc_h


def pack_calibration(cal: Calibration) -> tuple[bytes, bytes]:
    """The NVM bytes at 0x88..0xA1 (26) and 0xE1..0xE7 (7) holding ``cal``."""
    block_tp = struct.pack(
        "<HhhHhhhhhhhh",
        cal.dig_t1, cal.dig_t2, cal.dig_t3, cal.dig_p1, cal.dig_p2, cal.dig_p3,
        cal.dig_p4, cal.dig_p5, cal.dig_p6, cal.dig_p7, cal.dig_p8, cal.dig_p9,
    ) + bytes([0x00, cal.dig_h1 & 0xFF])  # fmt: skip
    block_h = struct.pack("<h", cal.dig_h2) + bytes(
        [
            cal.dig_h3 & 0xFF,
            (cal.dig_h4 >> 4) & 0xFF,
            (cal.dig_h4 & 0x0F) | ((cal.dig_h5 & 0x0F) << 4),
            (cal.dig_h5 >> 4) & 0xFF,
            cal.dig_h6 & 0xFF,
        ]
    )
    return block_tp, block_h


class SimBoschSensor(SimChip):
    """Register-level BMx280; see the module docstring."""

    CHIP_ID: ClassVar[int]
    HAS_HUMIDITY: ClassVar[bool]

    def __init__(self, calibration: Calibration) -> None:
        super().__init__()
        self.calibration = calibration
        self.regs = bytearray(256)
        self._pointer = 0
        self._measuring_until: float | None = None
        self._nvm_busy_until = 0.0
        self._osrs_h_latched = 0
        self.measurements = 0

    def power_on_reset(self) -> None:
        """Registers to their reset values, calibration copied from NVM."""
        self.regs = bytearray(256)
        block_tp, block_h = pack_calibration(self.calibration)
        self.regs[0x88 : 0x88 + len(block_tp)] = block_tp
        if self.HAS_HUMIDITY:
            self.regs[0xE1 : 0xE1 + len(block_h)] = block_h
        self.regs[0xD0] = self.CHIP_ID
        self.regs[0xF7:0xFD] = b"\x80\x00\x00\x80\x00\x00"
        if self.HAS_HUMIDITY:
            self.regs[0xFD:0xFF] = b"\x80\x00"
        self._pointer = 0
        self._measuring_until = None
        self._osrs_h_latched = 0
        self._nvm_busy_until = self.now() + 0.002 if self._attachment else 0.0

    def write(self, data: bytes) -> None:
        """(register, value) pairs; a lone trailing byte only sets the pointer."""
        self._advance()
        for i in range(0, len(data), 2):
            self._pointer = data[i]
            if i + 1 < len(data):
                self._write_register(data[i], data[i + 1])

    def read(self, length: int) -> bytes:
        """Registers from the pointer on, auto-incrementing."""
        self._advance()
        out = bytearray()
        for _ in range(length):
            reg = self._pointer
            out.append(self._status() if reg == 0xF3 else self.regs[reg])
            self._pointer = min(self._pointer + 1, 0xFF)
        return bytes(out)

    def _status(self) -> int:
        status = 0
        if self._measuring_until is not None:
            status |= 0x08
        if self.now() < self._nvm_busy_until:
            status |= 0x01
        return status

    def _write_register(self, reg: int, value: int) -> None:
        if reg == 0xE0:
            if value == 0xB6:
                self.power_on_reset()
        elif reg == 0xF2 and self.HAS_HUMIDITY:
            self.regs[0xF2] = value & 0x07
        elif reg == 0xF5:
            self.regs[0xF5] = value & 0xFD
        elif reg == 0xF4:
            self.regs[0xF4] = value
            self._osrs_h_latched = self.regs[0xF2] & 0x07 if self.HAS_HUMIDITY else 0
            mode = value & 0x03
            if mode in (0b01, 0b10) and self._measuring_until is None:
                self._measuring_until = self.now() + self._typical_time_s()
            elif mode == 0b11:
                self._complete()
        # Everything else is read-only: writes are ignored, as on the chip.

    def _typical_time_s(self) -> float:
        ctrl = self.regs[0xF4]
        t, p, h = _factor(ctrl >> 5), _factor((ctrl >> 2) & 7), _factor(self._osrs_h_latched)
        ms = 1.0 + (2.0 * t if t else 0) + (2.0 * p + 0.5 if p else 0) + (2.0 * h + 0.5 if h else 0)
        return ms / 1000.0

    def _advance(self) -> None:
        if self._measuring_until is not None and self.now() >= self._measuring_until:
            self._complete()
            self._measuring_until = None
            self.regs[0xF4] &= 0xFC  # forced mode: back to sleep
        elif self.regs[0xF4] & 0x03 == 0x03:
            self._complete()  # normal mode: always fresh

    def _complete(self) -> None:
        self.measurements += 1
        env = self.attachment.environment.now()
        ctrl = self.regs[0xF4]
        codes = (ctrl >> 5, (ctrl >> 2) & 7, self._osrs_h_latched)
        adc_t, adc_p, adc_h = raw_values(
            self.calibration,
            env.temperature_c,
            env.pressure_hpa,
            env.humidity_pct if self.HAS_HUMIDITY else None,
        )
        adc_t = _resolution(adc_t, codes[0])
        adc_p = _resolution(adc_p, codes[1])
        self.regs[0xF7:0xFA] = _pack20(adc_p)
        self.regs[0xFA:0xFD] = _pack20(adc_t)
        if self.HAS_HUMIDITY:
            hum = 0x8000 if codes[2] == 0 or adc_h is None else adc_h
            self.regs[0xFD:0xFF] = hum.to_bytes(2, "big")


def _resolution(adc: int, code: int) -> int:
    """0x80000 if skipped; else keep 16 + (osrs code - 1) bits, as with the filter off."""
    if code == 0:
        return 0x80000
    bits = min(16 + code - 1, 20)
    return adc & ~((1 << (20 - bits)) - 1)


def _pack20(value: int) -> bytes:
    return bytes([(value >> 12) & 0xFF, (value >> 4) & 0xFF, (value & 0x0F) << 4])


class SimBME280(SimBoschSensor):
    """A simulated BME280 (chip id 0x60)."""

    PART: ClassVar[str] = "BME280"
    CHIP_ID: ClassVar[int] = CHIP_ID_BME280
    HAS_HUMIDITY: ClassVar[bool] = True
    variant = "BME280"

    def __init__(self, calibration: Calibration = BME280_CALIBRATION) -> None:
        super().__init__(calibration)


class SimBMP280(SimBoschSensor):
    """A simulated BMP280 (chip id 0x58), with the datasheet's example calibration."""

    PART: ClassVar[str] = "BMP280"
    CHIP_ID: ClassVar[int] = CHIP_ID_BMP280
    HAS_HUMIDITY: ClassVar[bool] = False
    variant = "BMP280"

    def __init__(self, calibration: Calibration = DATASHEET_CALIBRATION) -> None:
        super().__init__(calibration)
