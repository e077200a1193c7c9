"""Bosch BMx280 calibration and integer compensation, shared by BME280 and BMP280.

Pure functions, no I/O: the formulas are the datasheets' own fixed-point code
(BME280 datasheet section 4.2.3 / BMP280 section 3.11.3): 32-bit temperature,
64-bit pressure (result in Pa as Q24.8), 32-bit humidity (Q22.10). C's truncating
division is reproduced where the reference code divides; ``>>`` on negative
numbers is an arithmetic shift in both C (on every supported compiler) and Python.

Also the measurement time (BME280 datasheet 9.1 / appendix B; BMP280 table 13):
``t_max = 1.25 + 2.3*osrs_t + (2.3*osrs_p + 0.575) + (2.3*osrs_h + 0.575)`` ms,
a term dropped when its measurement is skipped.

The register-level driver shared by both parts is :class:`BoschSensor`.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import ClassVar

from hal.bus import I2CBus, read_register, read_u8, write_register
from hal.drivers.base import ChipBusy, I2CSensor, Monotonic, Sleep
from hal.exc import ChipIdMismatch, InvalidReadingError, MeasurementTimeout

# Registers (identical on BME280 and BMP280, humidity ones only on BME280).
REG_CALIB_TP = 0x88  # 0x88..0xA1: T1..T3, P1..P9, reserved, H1
CALIB_TP_LENGTH = 26
REG_CALIB_H = 0xE1  # 0xE1..0xE7: H2..H6
CALIB_H_LENGTH = 7
REG_CHIP_ID = 0xD0
REG_RESET = 0xE0
RESET_WORD = 0xB6
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  # press[3], temp[3], hum[2]

STATUS_MEASURING = 0x08
STATUS_IM_UPDATE = 0x01
MODE_FORCED = 0b01

#: Oversampling register codes by factor (0 = measurement skipped).
OVERSAMPLING_CODES = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
#: IIR filter register codes by coefficient.
FILTER_CODES = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}
#: What the chip returns for a skipped (or never run) measurement.
SKIPPED_20BIT = 0x80000
SKIPPED_16BIT = 0x8000
#: Start-up time after power-on or soft reset (datasheet table 1: 2 ms max).
STARTUP_S = 0.002
#: Extra status polls after the computed maximum measurement time, each waiting this
#: fraction of it, before giving up.
READY_POLLS = 4
READY_POLL_FRACTION = 0.1
READY_POLL_MIN_S = 0.0005


@dataclass(frozen=True)
class Calibration:
    """The trimming parameters burnt into the chip's NVM."""

    dig_t1: int
    dig_t2: int
    dig_t3: int
    dig_p1: int
    dig_p2: int
    dig_p3: int
    dig_p4: int
    dig_p5: int
    dig_p6: int
    dig_p7: int
    dig_p8: int
    dig_p9: int
    dig_h1: int = 0
    dig_h2: int = 0
    dig_h3: int = 0
    dig_h4: int = 0
    dig_h5: int = 0
    dig_h6: int = 0


def parse_calibration(block_tp: bytes, block_h: bytes | None = None) -> Calibration:
    """Decode the 26 bytes at 0x88 and, for a BME280, the 7 bytes at 0xE1."""
    if len(block_tp) != CALIB_TP_LENGTH:
        raise ValueError(f"expected {CALIB_TP_LENGTH} calibration bytes, got {len(block_tp)}")
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack("<HhhHhhhhhhhh", block_tp[:24])
    h = {}
    if block_h is not None:
        if len(block_h) != CALIB_H_LENGTH:
            raise ValueError(f"expected {CALIB_H_LENGTH} humidity bytes, got {len(block_h)}")
        e4, e5, e6 = block_h[3], block_h[4], block_h[5]
        h = {
            "dig_h1": block_tp[25],
            "dig_h2": struct.unpack("<h", block_h[0:2])[0],
            "dig_h3": block_h[2],
            "dig_h4": (_s8(e4) * 16) | (e5 & 0x0F),
            "dig_h5": (_s8(e6) * 16) | (e5 >> 4),
            "dig_h6": _s8(block_h[6]),
        }
    return Calibration(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, **h)


def compensate_temperature(cal: Calibration, adc_t: int) -> tuple[int, int]:
    """Return ``(t_fine, temperature in 0.01 °C)`` from the 20-bit temperature ADC value."""
    var1 = (((adc_t >> 3) - (cal.dig_t1 << 1)) * cal.dig_t2) >> 11
    var2 = (((((adc_t >> 4) - cal.dig_t1) * ((adc_t >> 4) - cal.dig_t1)) >> 12) * cal.dig_t3) >> 14
    t_fine = var1 + var2
    return t_fine, (t_fine * 5 + 128) >> 8


def compensate_pressure(cal: Calibration, adc_p: int, t_fine: int) -> int:
    """Return pressure in Pa as unsigned Q24.8 (divide by 256), 64-bit integer version.

    Returns 0 where the reference code does (``var1 == 0``: avoids a division by zero).
    """
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal.dig_p6
    var2 = var2 + ((var1 * cal.dig_p5) << 17)
    var2 = var2 + (cal.dig_p4 << 35)
    var1 = ((var1 * var1 * cal.dig_p3) >> 8) + ((var1 * cal.dig_p2) << 12)
    var1 = (((1 << 47) + var1) * cal.dig_p1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _c_div(((p << 31) - var2) * 3125, var1)
    var1 = (cal.dig_p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.dig_p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal.dig_p7 << 4)


def compensate_humidity(cal: Calibration, adc_h: int, t_fine: int) -> int:
    """Return relative humidity in %RH as unsigned Q22.10 (divide by 1024)."""
    v = t_fine - 76800
    v = ((((adc_h << 14) - (cal.dig_h4 << 20) - (cal.dig_h5 * v)) + 16384) >> 15) * (
        (
            (((((v * cal.dig_h6) >> 10) * (((v * cal.dig_h3) >> 11) + 32768)) >> 10) + 2097152)
            * cal.dig_h2
            + 8192
        )
        >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal.dig_h1) >> 4)
    v = min(max(v, 0), 419430400)
    return v >> 12


def measurement_time_max_s(osrs_t: int, osrs_p: int, osrs_h: int | None) -> float:
    """The datasheet's maximum measurement time for the given oversampling factors.

    ``osrs_h`` is None for a BMP280 (no humidity stage at all); 0 means "skipped".
    """
    ms = 1.25
    if osrs_t:
        ms += 2.3 * osrs_t
    if osrs_p:
        ms += 2.3 * osrs_p + 0.575
    if osrs_h:
        ms += 2.3 * osrs_h + 0.575
    return ms / 1000.0


def _c_div(a: int, b: int) -> int:
    """C's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _s8(value: int) -> int:
    return value - 256 if value & 0x80 else value


class BoschSensor(I2CSensor):
    """The register-level driver of BME280 and BMP280, in forced mode.

    :meth:`start` writes the oversampling and filter settings and starts one forced
    measurement (three register writes); it returns the datasheet's maximum
    measurement time. :meth:`collect` confirms the status register no longer says
    "measuring" (else the chip is polled again, a bounded number of times), then
    burst-reads the data registers in one transfer so the values belong to one
    measurement. The chip goes back to sleep by itself.
    """

    ADDRESSES: ClassVar[tuple[int, ...]] = (0x76, 0x77)
    READY_POLLS: ClassVar[int] = READY_POLLS
    CHIP_IDS: ClassVar[tuple[int, ...]]
    HAS_HUMIDITY: ClassVar[bool]

    def __init__(
        self,
        bus: I2CBus,
        address: int | None = None,
        *,
        name: str = "",
        sleep: Sleep = time.sleep,
        monotonic: Monotonic = time.monotonic,
        oversampling_t: int = 1,
        oversampling_p: int = 1,
        oversampling_h: int = 1,
        filter_coefficient: int = 0,
    ) -> None:
        super().__init__(bus, address, name=name, sleep=sleep, monotonic=monotonic)
        for label, factor in (
            ("temperature", oversampling_t),
            ("pressure", oversampling_p),
            ("humidity", oversampling_h),
        ):
            if factor not in OVERSAMPLING_CODES or (label == "temperature" and factor == 0):
                raise ValueError(f"{label} oversampling must be one of 1, 2, 4, 8, 16")
        if filter_coefficient not in FILTER_CODES:
            raise ValueError("filter coefficient must be one of 0, 2, 4, 8, 16")
        self._osrs_t = oversampling_t
        self._osrs_p = oversampling_p
        self._osrs_h = oversampling_h if self.HAS_HUMIDITY else None
        self._filter = filter_coefficient
        self._calibration: Calibration | None = None

    @property
    def quantities(self) -> tuple[str, ...]:
        """The keys :meth:`read` returns: a stage set to oversampling 0 is skipped."""
        skipped = {
            "pressure_hpa": not self._osrs_p,
            "humidity_pct": not self._osrs_h,
        }
        return tuple(q for q in self.QUANTITIES if not skipped.get(q, False))

    @property
    def calibration(self) -> Calibration | None:
        """The calibration read from NVM, once set up."""
        return self._calibration

    @property
    def measurement_time_s(self) -> float:
        """The wait requested after starting a measurement (datasheet maximum)."""
        return measurement_time_max_s(self._osrs_t, self._osrs_p, self._osrs_h)

    def _setup(self) -> None:
        chip_id = read_u8(self._bus, self._address, REG_CHIP_ID)
        if chip_id not in self.CHIP_IDS:
            expected = self.CHIP_IDS[0] if len(self.CHIP_IDS) == 1 else self.CHIP_IDS
            raise ChipIdMismatch(self._name, expected, chip_id)
        write_register(self._bus, self._address, REG_RESET, RESET_WORD)
        self._sleep(STARTUP_S)
        self._wait_until_clear(STATUS_IM_UPDATE, STARTUP_S)
        block_tp = read_register(self._bus, self._address, REG_CALIB_TP, CALIB_TP_LENGTH)
        block_h = (
            read_register(self._bus, self._address, REG_CALIB_H, CALIB_H_LENGTH)
            if self.HAS_HUMIDITY
            else None
        )
        self._calibration = parse_calibration(block_tp, block_h)

    def _start(self) -> float:
        if self._osrs_h is not None:
            # ctrl_hum only takes effect with the following write to ctrl_meas.
            write_register(self._bus, self._address, REG_CTRL_HUM, OVERSAMPLING_CODES[self._osrs_h])
        write_register(self._bus, self._address, REG_CONFIG, FILTER_CODES[self._filter] << 2)
        ctrl_meas = (
            (OVERSAMPLING_CODES[self._osrs_t] << 5)
            | (OVERSAMPLING_CODES[self._osrs_p] << 2)
            | MODE_FORCED
        )
        write_register(self._bus, self._address, REG_CTRL_MEAS, ctrl_meas)
        return self.measurement_time_s

    def _collect(self) -> dict[str, float]:
        cal = self._calibration
        assert cal is not None  # set by _setup
        if read_u8(self._bus, self._address, REG_STATUS) & STATUS_MEASURING:
            raise ChipBusy(_poll_step_s(self.measurement_time_s))
        length = 8 if self._osrs_h is not None else 6
        data = read_register(self._bus, self._address, REG_DATA, length)
        adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
        adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
        if adc_t == SKIPPED_20BIT:
            raise InvalidReadingError(self._name, "temperature not measured (0x80000)")
        t_fine, centi_c = compensate_temperature(cal, adc_t)
        reading = {"temperature_c": centi_c / 100.0}
        if self._osrs_p:
            if adc_p == SKIPPED_20BIT:
                raise InvalidReadingError(self._name, "pressure not measured (0x80000)")
            q24_8 = compensate_pressure(cal, adc_p, t_fine)
            if q24_8 == 0:
                raise InvalidReadingError(self._name, "pressure compensation undefined")
            reading["pressure_hpa"] = q24_8 / 256.0 / 100.0
        if self._osrs_h:
            adc_h = (data[6] << 8) | data[7]
            if adc_h == SKIPPED_16BIT:
                raise InvalidReadingError(self._name, "humidity not measured (0x8000)")
            reading["humidity_pct"] = compensate_humidity(cal, adc_h, t_fine) / 1024.0
        return reading

    def _wait_until_clear(self, bit: int, base_wait_s: float) -> None:
        step = _poll_step_s(base_wait_s)
        waited = base_wait_s
        for attempt in range(READY_POLLS + 1):
            if not read_u8(self._bus, self._address, REG_STATUS) & bit:
                return
            if attempt < READY_POLLS:
                self._sleep(step)
                waited += step
        raise MeasurementTimeout(self._name, waited)


def _poll_step_s(base_wait_s: float) -> float:
    """How long to wait between status polls after ``base_wait_s`` has passed."""
    return max(base_wait_s * READY_POLL_FRACTION, READY_POLL_MIN_S)
