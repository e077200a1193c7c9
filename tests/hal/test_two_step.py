"""The two-step measurement (``start`` then ``collect``) of every driver, on a manual clock.

Drivers get ``monotonic=clock.monotonic``, so the simulated chips and the drivers
agree on time; ``clock.advance`` lets time pass without recording a sleep, so a test
can assert that neither step sleeps on the conversion.
"""

from __future__ import annotations

import errno

import pytest

from hal.drivers.base import I2CSensor
from hal.drivers.bh1750 import BH1750
from hal.drivers.bme280 import BME280
from hal.drivers.bmp280 import BMP280
from hal.drivers.sht3x import SHT3x
from hal.drivers.sht4x import SHT4x
from hal.drivers.tmp102 import TMP102
from hal.exc import ConversionNotReady, I2CError, MeasurementTimeout, SensorError
from hal.sim.board import Board
from hal.sim.bosch import SimBME280
from hal.sim.clock import ManualClock
from hal.sim.sensirion import SimSHT4x
from hal.sim.tmp102 import SimTMP102
from tests.hal.conftest import PINNED

# Part, address, the datasheet's maximum conversion time at the default settings.
DRIVERS: list[tuple[type[I2CSensor], int, float]] = [
    (BME280, 0x76, 0.0093),  # BME280 9.1: 1.25 + 2.3 + 2.875 + 2.875 ms
    (BMP280, 0x77, 0.006425),  # BMP280 table 13: 1.25 + 2.3 + 2.875 ms
    (SHT3x, 0x44, 0.0155),  # SHT3x table 4, high repeatability
    (SHT4x, 0x45, 0.0083),  # SHT4x table 4, high precision
    (BH1750, 0x23, 0.180),  # BH1750FVI: H-resolution 180 ms max
    (TMP102, 0x48, 0.035),  # TMP102: 35 ms max
]
IDS = [cls.PART for cls, _, _ in DRIVERS]


def make(cls: type[I2CSensor], address: int, board: Board, clock: ManualClock) -> I2CSensor:
    return cls(board.bus(1), address, sleep=clock.sleep, monotonic=clock.monotonic)


def assert_matches_environment(sensor: I2CSensor, reading: dict[str, float]) -> None:
    assert set(reading) == set(sensor.quantities)
    tolerance = {
        "temperature_c": 0.07,  # TMP102: 0.0625 °C per LSB
        "humidity_pct": 0.05,
        "pressure_hpa": 0.02,
        "illuminance_lux": 1 / 1.2,
    }
    for quantity, value in reading.items():
        assert value == pytest.approx(PINNED[quantity], abs=tolerance[quantity]), quantity


@pytest.mark.parametrize(("cls", "address", "max_s"), DRIVERS, ids=IDS)
def test_start_returns_the_datasheet_maximum_and_neither_step_sleeps(
    cls: type[I2CSensor], address: int, max_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = make(cls, address, board, clock)
    sensor.setup()
    clock.sleeps.clear()
    wait = sensor.start()
    assert wait == pytest.approx(max_s)
    assert sensor.converting
    clock.advance(wait)
    reading = sensor.collect()
    assert clock.sleeps == []  # no step waited on the conversion
    assert not sensor.converting
    assert_matches_environment(sensor, reading)


@pytest.mark.parametrize(("cls", "address", "max_s"), DRIVERS, ids=IDS)
def test_collecting_early_is_refused_without_touching_the_bus(
    cls: type[I2CSensor], address: int, max_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = make(cls, address, board, clock)
    wait = sensor.start()
    clock.advance(wait * 0.75)
    board.log.clear()
    with pytest.raises(ConversionNotReady) as info:
        sensor.collect()
    assert info.value.remaining_s == pytest.approx(wait * 0.25)
    assert info.value.sensor == sensor.name
    assert "not ready" in str(info.value)
    assert list(board.log) == []
    # Nothing is lost: the conversion is still pending and completes on time.
    assert sensor.converting
    clock.advance(info.value.remaining_s)
    assert_matches_environment(sensor, sensor.collect())


@pytest.mark.parametrize(("cls", "address", "max_s"), DRIVERS, ids=IDS)
def test_start_during_a_conversion_disturbs_nothing(
    cls: type[I2CSensor], address: int, max_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = make(cls, address, board, clock)
    first = sensor.start()
    clock.advance(first / 2)
    board.log.clear()
    remaining = sensor.start()
    assert remaining == pytest.approx(first / 2)
    assert list(board.log) == []  # no second measurement command
    clock.advance(remaining)
    assert_matches_environment(sensor, sensor.collect())


@pytest.mark.parametrize(("cls", "address", "max_s"), DRIVERS, ids=IDS)
def test_start_after_an_uncollected_conversion_begins_a_fresh_one(
    cls: type[I2CSensor], address: int, max_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = make(cls, address, board, clock)
    clock.advance(sensor.start())
    board.log.clear()
    assert sensor.start() == pytest.approx(max_s)
    assert [t.kind for t in board.log].count("write") >= 1  # a new measurement command
    clock.advance(max_s)
    assert_matches_environment(sensor, sensor.collect())


@pytest.mark.parametrize(("cls", "address", "max_s"), DRIVERS, ids=IDS)
def test_collect_without_start_and_after_close(
    cls: type[I2CSensor], address: int, max_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = make(cls, address, board, clock)
    with pytest.raises(SensorError, match="no conversion started"):
        sensor.collect()
    clock.advance(sensor.start())
    sensor.collect()
    with pytest.raises(SensorError, match="no conversion started"):
        sensor.collect()  # one conversion, one result
    sensor.start()
    sensor.close()
    assert not sensor.converting
    with pytest.raises(SensorError, match="closed"):
        sensor.collect()
    with pytest.raises(SensorError, match="closed"):
        sensor.start()


@pytest.mark.parametrize(("cls", "address", "max_s"), DRIVERS, ids=IDS)
def test_a_bus_error_at_collect_ends_the_conversion_and_the_set_up(
    cls: type[I2CSensor], address: int, max_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = make(cls, address, board, clock)
    clock.advance(sensor.start())
    board.io_error(1, address, count=1)
    with pytest.raises(I2CError) as info:
        sensor.collect()
    assert info.value.errno == errno.EIO
    assert not sensor.converting
    board.log.clear()
    clock.advance(sensor.start())
    # The next start identified and set the chip up again before measuring.
    assert len([t for t in board.log if t.kind == "write"]) > 1
    assert_matches_environment(sensor, sensor.collect())


def test_a_slow_bosch_chip_is_polled_then_times_out(board: Board, clock: ManualClock) -> None:
    chip = board.chip(1, 0x76)
    assert isinstance(chip, SimBME280)
    sensor = make(BME280, 0x76, board, clock)
    wait = sensor.start()
    chip._measuring_until = clock.monotonic() + 1.0  # still busy long after the maximum
    clock.advance(wait)
    step = max(wait * 0.1, 0.0005)
    for _ in range(BME280.READY_POLLS):
        with pytest.raises(ConversionNotReady) as info:
            sensor.collect()
        assert info.value.remaining_s == pytest.approx(step)
        with pytest.raises(ConversionNotReady):
            sensor.collect()  # the poll step has not passed yet
        clock.advance(step)
    with pytest.raises(MeasurementTimeout) as timeout:
        sensor.collect()
    assert timeout.value.waited_s == pytest.approx(wait + BME280.READY_POLLS * step)
    assert not sensor.converting


def test_a_bosch_chip_done_at_the_first_poll_is_collected(board: Board, clock: ManualClock) -> None:
    chip = board.chip(1, 0x76)
    assert isinstance(chip, SimBME280)
    sensor = make(BME280, 0x76, board, clock)
    wait = sensor.start()
    chip._measuring_until = clock.monotonic() + wait + 0.0005
    clock.advance(wait)
    with pytest.raises(ConversionNotReady) as info:
        sensor.collect()  # status bit 3 still set: the chip says "measuring"
    clock.advance(info.value.remaining_s)
    assert_matches_environment(sensor, sensor.collect())


def test_a_slow_tmp102_is_polled_through_its_os_bit(board: Board, clock: ManualClock) -> None:
    chip = board.chip(1, 0x48)
    assert isinstance(chip, SimTMP102)
    sensor = make(TMP102, 0x48, board, clock)
    wait = sensor.start()
    assert chip._one_shot_done is not None
    chip._one_shot_done = clock.monotonic() + wait + 0.005  # 5 ms beyond the maximum
    clock.advance(wait)
    with pytest.raises(ConversionNotReady) as info:
        sensor.collect()
    assert info.value.remaining_s == pytest.approx(0.0035)
    clock.advance(0.0035)
    with pytest.raises(ConversionNotReady):
        sensor.collect()
    clock.advance(0.0035)
    assert_matches_environment(sensor, sensor.collect())


def test_a_tmp102_that_never_finishes_times_out(board: Board, clock: ManualClock) -> None:
    chip = board.chip(1, 0x48)
    assert isinstance(chip, SimTMP102)
    sensor = make(TMP102, 0x48, board, clock)
    wait = sensor.start()
    chip._one_shot_done = clock.monotonic() + 10.0
    clock.advance(wait)
    for _ in range(TMP102.READY_POLLS):
        with pytest.raises(ConversionNotReady):
            sensor.collect()
        clock.advance(0.0035)
    with pytest.raises(MeasurementTimeout) as info:
        sensor.collect()
    assert info.value.waited_s == pytest.approx(0.035 + 4 * 0.0035)


def test_a_sensirion_chip_still_measuring_after_the_maximum_nacks(
    board: Board, clock: ManualClock
) -> None:
    chip = board.chip(1, 0x45)
    assert isinstance(chip, SimSHT4x)
    sensor = make(SHT4x, 0x45, board, clock)
    wait = sensor.start()
    assert chip._pending is not None
    chip._pending = (chip._pending[0], clock.monotonic() + 1.0)
    clock.advance(wait)
    with pytest.raises(I2CError) as info:
        sensor.collect()
    assert info.value.is_nack
    assert not sensor.converting


def test_read_is_start_sleep_collect(board: Board, clock: ManualClock) -> None:
    sensor = make(BH1750, 0x23, board, clock)
    sensor.setup()
    clock.sleeps.clear()
    reading = sensor.read()
    assert clock.sleeps == [pytest.approx(0.180)]
    assert not sensor.converting
    assert_matches_environment(sensor, reading)
    # read() also finishes a conversion someone else started, waiting only what is left.
    wait = sensor.start()
    clock.advance(wait - 0.030)
    clock.sleeps.clear()
    assert_matches_environment(sensor, sensor.read())
    assert clock.sleeps == [pytest.approx(0.030)]


def test_overlapping_conversions_on_one_bus(board: Board, clock: ManualClock) -> None:
    """All six parts converting at once: the longest wait, not the sum, is what it takes."""
    sensors = [make(cls, address, board, clock) for cls, address, _ in DRIVERS]
    for sensor in sensors:
        sensor.setup()
    started = clock.monotonic()
    waits = [sensor.start() for sensor in sensors]
    clock.advance(max(waits))
    for sensor in sensors:
        assert_matches_environment(sensor, sensor.collect())
    assert clock.monotonic() - started == pytest.approx(max(waits))
