"""Every error a driver raises names the sensor and says what went wrong, with the data
(waits, ids, bytes) a caller can act on; and what each driver reads off the chip at
set-up (status, serial number, calibration) is exactly what the chip holds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hal.crc import words_with_crc
from hal.drivers.bh1750 import BH1750
from hal.drivers.bme280 import BME280
from hal.drivers.bmp280 import BMP280
from hal.drivers.bosch import (
    CALIB_H_LENGTH,
    CALIB_TP_LENGTH,
    measurement_time_max_s,
    parse_calibration,
)
from hal.drivers.sht3x import SHT3x
from hal.drivers.sht4x import SHT4x
from hal.drivers.tmp102 import TMP102, is_tmp102_config
from hal.exc import (
    ChipIdMismatch,
    ConversionNotReady,
    CRCError,
    InvalidReadingError,
    MeasurementTimeout,
    SensorError,
)
from hal.sim.board import Board
from hal.sim.bosch import BME280_CALIBRATION, SimBME280, SimBMP280
from hal.sim.clock import ManualClock
from hal.sim.sensirion import SimSHT3x, SimSHT4x
from hal.sim.tmp102 import SimTMP102


def test_closed_and_not_started_errors_name_the_sensor(board: Board, clock: ManualClock) -> None:
    sensor = SHT3x(board.bus(1), name="attic", sleep=clock.sleep, monotonic=clock.monotonic)
    with pytest.raises(SensorError) as info:
        sensor.collect()
    assert info.value.sensor == "attic"
    assert str(info.value) == "attic: no conversion started (call start() first)"
    sensor.close()
    with pytest.raises(SensorError) as info:
        sensor.read()
    assert (info.value.sensor, str(info.value)) == ("attic", "attic: sensor is closed")


def test_close_powers_down_only_a_chip_that_was_set_up(board: Board, clock: ManualClock) -> None:
    never_used = BH1750(board.bus(1), sleep=clock.sleep, monotonic=clock.monotonic)
    board.log.clear()
    never_used.close()
    assert list(board.log) == []  # nothing to put to sleep
    used = BH1750(board.bus(1), sleep=clock.sleep, monotonic=clock.monotonic)
    used.read()
    board.log.clear()
    used.close()
    assert [t.data for t in board.log] == [b"\x00"]  # power down


def _slow_bosch(board: Board, clock: ManualClock) -> tuple[BME280, SimBME280]:
    chip = board.chip(1, 0x76)
    assert isinstance(chip, SimBME280)
    return BME280(board.bus(1), name="porch", sleep=clock.sleep, monotonic=clock.monotonic), chip


def test_busy_and_timeout_errors_name_the_sensor(board: Board, clock: ManualClock) -> None:
    sensor, chip = _slow_bosch(board, clock)
    wait = sensor.start()
    chip._measuring_until = clock.monotonic() + 1.0
    clock.advance(wait)
    for _ in range(sensor.READY_POLLS):
        with pytest.raises(ConversionNotReady) as busy:
            sensor.collect()
        assert busy.value.sensor == "porch"
        clock.advance(busy.value.remaining_s)
    with pytest.raises(MeasurementTimeout) as info:
        sensor.collect()
    assert info.value.sensor == "porch"
    assert str(info.value) == "porch: measurement not ready after 13.0 ms"  # 9.3 + 4 x 0.93


def test_a_bosch_chip_whose_nvm_copy_never_ends_times_out_at_set_up(
    board: Board, clock: ManualClock
) -> None:
    sensor, chip = _slow_bosch(board, clock)
    original = chip.power_on_reset

    def stuck_reset() -> None:
        original()
        chip._nvm_busy_until = clock.monotonic() + 1.0

    chip.power_on_reset = stuck_reset  # type: ignore[method-assign]
    with pytest.raises(MeasurementTimeout) as info:
        sensor.setup()
    # 2 ms start-up, then four polls 0.5 ms apart (the minimum step).
    assert info.value.waited_s == pytest.approx(0.004)
    assert info.value.sensor == "porch"
    status_reads = [t for t in board.log if t.kind == "write" and t.data == b"\xf3"]
    assert len(status_reads) == 5  # the first poll and four more
    assert clock.sleeps[-5:] == [0.002, 0.0005, 0.0005, 0.0005, 0.0005]


class _SimBME280Skipping(SimBME280):
    """Reports "skipped" (0x80000 / 0x8000) for the stages listed, whatever ctrl_meas says."""

    def __init__(self, skip: set[str]) -> None:
        super().__init__()
        self.skip = skip

    def _complete(self) -> None:
        super()._complete()
        if "pressure" in self.skip:
            self.regs[0xF7:0xFA] = b"\x80\x00\x00"
        if "humidity" in self.skip:
            self.regs[0xFD:0xFF] = b"\x80\x00"


@pytest.mark.parametrize(
    ("skip", "message"),
    [
        ("pressure", "pressure not measured (0x80000)"),
        ("humidity", "humidity not measured (0x8000)"),
    ],
)
def test_a_stage_the_chip_skipped_is_an_invalid_reading(
    skip: str, message: str, clock: ManualClock
) -> None:
    board = Board(clock=clock)
    board.attach(1, 0x76, _SimBME280Skipping({skip}))
    sensor = BME280(board.bus(1), name="porch", sleep=clock.sleep, monotonic=clock.monotonic)
    with pytest.raises(InvalidReadingError) as info:
        sensor.read()
    assert str(info.value) == f"porch: {message}"
    assert info.value.sensor == "porch"


def test_an_unusable_pressure_calibration_is_an_invalid_reading(clock: ManualClock) -> None:
    board = Board(clock=clock)
    board.attach(1, 0x76, SimBME280(replace(BME280_CALIBRATION, dig_p1=0)))
    sensor = BME280(board.bus(1), name="porch", sleep=clock.sleep, monotonic=clock.monotonic)
    with pytest.raises(InvalidReadingError) as info:
        sensor.read()
    assert str(info.value) == "porch: pressure compensation undefined"


def test_temperature_not_measured_names_the_sensor(board: Board, clock: ManualClock) -> None:
    sensor, chip = _slow_bosch(board, clock)
    sensor.setup()
    chip._complete = lambda: None  # type: ignore[method-assign]  # data stays at reset values
    with pytest.raises(InvalidReadingError) as info:
        sensor.read()
    assert str(info.value) == "porch: temperature not measured (0x80000)"


def test_bosch_reads_exactly_the_data_registers(board: Board, clock: ManualClock) -> None:
    for cls, address, length in ((BME280, 0x76, 8), (BMP280, 0x77, 6)):
        sensor = cls(board.bus(1), address, sleep=clock.sleep, monotonic=clock.monotonic)
        clock.advance(sensor.start())
        board.log.clear()
        sensor.collect()
        reads = [(t.kind, t.data) for t in board.log]
        # status (0xF3, one byte), then one burst from 0xF7: press[3] temp[3] (hum[2]).
        assert [data for kind, data in reads if kind == "write"] == [b"\xf3", b"\xf7"]
        assert [len(data) for kind, data in reads if kind == "read"] == [1, length]


def test_calibration_blocks_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError) as info:
        parse_calibration(bytes(CALIB_TP_LENGTH - 1))
    assert str(info.value) == "expected 26 calibration bytes, got 25"
    with pytest.raises(ValueError) as info:
        parse_calibration(bytes(CALIB_TP_LENGTH), bytes(CALIB_H_LENGTH + 1))
    assert str(info.value) == "expected 7 humidity bytes, got 8"


def test_dig_h2_is_signed() -> None:
    cal = parse_calibration(bytes(CALIB_TP_LENGTH), bytes([0x00, 0xFF, 0, 0, 0, 0, 0]))
    assert cal.dig_h2 == -256  # 0xFF00 as int16 (BME280 table 16: dig_H2 signed short)


@pytest.mark.parametrize(
    ("osrs", "expected_ms"),
    [
        ((1, 1, 2), 1.25 + 2.3 + 2.875 + 5.175),  # BME280 9.1: humidity x2
        ((1, 0, 16), 1.25 + 2.3 + 37.375),  # pressure skipped, humidity x16
        ((4, 0, 0), 1.25 + 9.2),  # temperature only
    ],
)
def test_measurement_time_for_each_humidity_oversampling(
    osrs: tuple[int, int, int], expected_ms: float
) -> None:
    assert measurement_time_max_s(*osrs) * 1000 == pytest.approx(expected_ms)


def test_sht3x_keeps_the_status_read_at_set_up(board: Board, clock: ManualClock) -> None:
    sensor = SHT3x(board.bus(1), sleep=clock.sleep, monotonic=clock.monotonic)
    assert sensor.status is None
    sensor.setup()
    chip = board.chip(1, 0x44)
    assert isinstance(chip, SimSHT3x)
    assert sensor.status == chip.STATUS_RESET_DETECTED  # after the soft reset
    assert sensor.measurement_time_s == 0.0155


def test_sht4x_serial_number_is_none_until_set_up(board: Board, clock: ManualClock) -> None:
    sensor = SHT4x(board.bus(1), 0x45, sleep=clock.sleep, monotonic=clock.monotonic)
    assert sensor.serial_number is None
    sensor.setup()
    chip = board.chip(1, 0x45)
    assert isinstance(chip, SimSHT4x)
    assert sensor.serial_number == chip.serial_number


@pytest.mark.parametrize(("cls", "address"), [(SHT3x, 0x44), (SHT4x, 0x45)])
def test_a_bad_crc_at_set_up_names_the_sensor(
    cls: type[SHT3x] | type[SHT4x], address: int, board: Board, clock: ManualClock
) -> None:
    board.corrupt_crc(1, address, count=1)
    sensor = cls(board.bus(1), address, name="loft", sleep=clock.sleep, monotonic=clock.monotonic)
    with pytest.raises(CRCError) as info:
        sensor.setup()
    assert info.value.sensor == "loft"
    sensor.setup()  # the next try reads a good word


def test_a_wrong_length_crc_block_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        words_with_crc("x", b"\xbe\xef\x92\x00")
    assert str(info.value) == "expected a multiple of 3 bytes, got 4"


def test_tmp102_reads_two_byte_registers(board: Board, clock: ManualClock) -> None:
    sensor = TMP102(board.bus(1), sleep=clock.sleep, monotonic=clock.monotonic)
    board.log.clear()
    sensor.read()
    assert [(t.kind, t.data if t.kind == "write" else len(t.data)) for t in board.log] == [
        ("write", b"\x01"),  # set-up: the configuration register...
        ("read", 2),  # ... both bytes (R1:R0 identify the part)
        ("write", b"\x01\x01\xa0"),  # shutdown
        ("write", b"\x01\x81\xa0"),  # one-shot
        ("write", b"\x01"),  # is OS back to 1?
        ("read", 2),
        ("write", b"\x00"),  # the temperature register
        ("read", 2),
    ]


def test_tmp102_left_in_shutdown_is_still_a_tmp102(board: Board, clock: ManualClock) -> None:
    board.bus(1).write(0x48, bytes([0x01, 0x61, 0xA0]))  # SD=1, as a previous run left it
    assert TMP102(board.bus(1), sleep=clock.sleep, monotonic=clock.monotonic).read()


def test_tmp102_identity_mismatch_carries_what_was_found(board: Board, clock: ManualClock) -> None:
    chip = board.chip(1, 0x48)
    assert isinstance(chip, SimTMP102)
    chip._config_as_read = lambda: bytes([0x25, 0x83])  # type: ignore[method-assign]
    with pytest.raises(ChipIdMismatch) as info:
        TMP102(board.bus(1), name="shed", sleep=clock.sleep).setup()
    assert (info.value.sensor, info.value.expected, info.value.found) == ("shed", 0x60, 0x20)
    assert str(info.value) == "shed: resolution bits R1:R0 0x20, expected 0x60"


@pytest.mark.parametrize(
    ("config", "answer"),
    [(b"\x60\xa0", True), (b"\x61\xa0", True), (b"\xff\xff", True), (b"\x20\xa0", False),
     (b"\x05\x83", False), (b"\x60", False), (b"\x60\xa0\x00", False)],
)  # fmt: skip
def test_is_tmp102_config(config: bytes, answer: bool) -> None:
    assert is_tmp102_config(config) is answer


def test_tmp102_timeout_names_the_sensor(board: Board, clock: ManualClock) -> None:
    chip = board.chip(1, 0x48)
    assert isinstance(chip, SimTMP102)
    sensor = TMP102(board.bus(1), name="shed", sleep=clock.sleep, monotonic=clock.monotonic)
    sensor.setup()
    clock.sleeps.clear()
    original = chip._write_config

    def never_done(value: bytes) -> None:
        original(value)
        chip._one_shot_done = clock.monotonic() + 10.0

    chip._write_config = never_done  # type: ignore[method-assign]
    with pytest.raises(MeasurementTimeout) as info:
        sensor.read()
    assert info.value.sensor == "shed"
    assert clock.sleeps == [0.035, 0.0035, 0.0035, 0.0035, 0.0035]
    assert info.value.waited_s == pytest.approx(0.049)


def test_a_bmp280_where_a_bme280_sits_names_every_id_it_accepts(
    board: Board, clock: ManualClock
) -> None:
    with pytest.raises(ChipIdMismatch) as info:
        BMP280(board.bus(1), 0x76, sleep=clock.sleep, monotonic=clock.monotonic).setup()
    assert (info.value.expected, info.value.found) == ((0x58, 0x56, 0x57), 0x60)
    assert str(info.value).endswith("chip id 0x60, expected 0x58 or 0x56 or 0x57")


@pytest.mark.parametrize(
    ("cls", "address", "humidity"), [(BME280, 0x76, True), (BMP280, 0x77, False)]
)
def test_set_up_reads_the_calibration_blocks_the_part_has(
    cls: type[BME280] | type[BMP280], address: int, humidity: bool, board: Board, clock: ManualClock
) -> None:
    board.log.clear()
    cls(board.bus(1), address, sleep=clock.sleep, monotonic=clock.monotonic).setup()
    pointers = [t.data for t in board.log if t.kind == "write" and len(t.data) == 1]
    assert (b"\x88" in pointers, b"\xe1" in pointers) == (True, humidity)
    reads = [len(t.data) for t in board.log if t.kind == "read"]
    assert (26 in reads, 7 in reads) == (True, humidity)


@pytest.mark.parametrize(("cls", "address"), [(BME280, 0x76), (BMP280, 0x77)])
def test_all_twenty_bits_of_temperature_and_pressure_are_used(
    cls: type[BME280] | type[BMP280], address: int, board: Board, clock: ManualClock
) -> None:
    """At x16 oversampling the chip fills the XLSB nibbles: the driver must use them."""
    from hal.drivers.bosch import compensate_pressure, compensate_temperature

    sensor = cls(
        board.bus(1), address, sleep=clock.sleep, monotonic=clock.monotonic,
        oversampling_t=16, oversampling_p=16,
    )  # fmt: skip
    reading = sensor.read()
    chip = board.chip(1, address)
    assert isinstance(chip, SimBME280 | SimBMP280)
    regs = chip.regs
    adc_p = (regs[0xF7] << 12) | (regs[0xF8] << 4) | (regs[0xF9] >> 4)
    adc_t = (regs[0xFA] << 12) | (regs[0xFB] << 4) | (regs[0xFC] >> 4)
    assert adc_p & 0xF and adc_t & 0xF  # the low nibbles carry data here
    t_fine, centi_c = compensate_temperature(chip.calibration, adc_t)
    assert reading["temperature_c"] == centi_c / 100
    assert reading["pressure_hpa"] == compensate_pressure(chip.calibration, adc_p, t_fine) / 25600
