"""What every driver's constructor promises: defaults, the options it passes on, the
settings it refuses (and how it says so), and what it reports about itself."""

from __future__ import annotations

from typing import Any

import pytest

from hal.drivers.base import I2CSensor
from hal.drivers.bh1750 import BH1750
from hal.drivers.bme280 import BME280
from hal.drivers.bmp280 import BMP280
from hal.drivers.sht3x import SHT3x
from hal.drivers.sht4x import SHT4x
from hal.drivers.tmp102 import TMP102
from hal.exc import InvalidAddressError
from hal.sim.board import Board
from hal.sim.bosch import SimBME280
from hal.sim.clock import ManualClock

DRIVERS: list[type[I2CSensor]] = [BME280, BMP280, SHT3x, SHT4x, BH1750, TMP102]
ALLOWED = {
    BME280: "0x76, 0x77",
    BMP280: "0x76, 0x77",
    SHT3x: "0x44, 0x45",
    SHT4x: "0x44, 0x45, 0x46",
    BH1750: "0x23, 0x5c",
    TMP102: "0x48, 0x49, 0x4a, 0x4b",
}


@pytest.mark.parametrize("cls", DRIVERS, ids=lambda c: c.PART)
def test_defaults(cls: type[I2CSensor], board: Board) -> None:
    sensor = cls(board.bus(1))
    address = cls.ADDRESSES[0]
    assert sensor.address == address
    assert sensor.bus_number == 1
    assert sensor.name == f"{cls.PART.lower()}@1:0x{address:02x}"
    assert sensor.part == cls.PART
    assert repr(sensor) == (
        f"<{cls.__name__} {cls.PART.lower()}@1:0x{address:02x} at i2c-1 0x{address:02x}>"
    )
    assert not sensor.converting


@pytest.mark.parametrize("cls", DRIVERS, ids=lambda c: c.PART)
def test_every_option_is_passed_on(cls: type[I2CSensor], board: Board, clock: ManualClock) -> None:
    sleeps: list[float] = []
    ticks: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    def monotonic() -> float:
        ticks.append(clock.monotonic())
        return clock.monotonic()

    address = {BMP280: 0x77, SHT4x: 0x45}.get(cls, cls.ADDRESSES[0])  # not the default
    sensor = cls(board.bus(1), address, name="outdoor", sleep=sleep, monotonic=monotonic)
    assert (sensor.name, sensor.address) == ("outdoor", address)
    assert "outdoor" in repr(sensor)
    sensor.read()
    assert sleeps  # the injected sleep waited
    ticks.clear()
    wait = sensor.start()
    assert ticks  # the injected clock timed the conversion
    clock.advance(wait)
    assert set(sensor.collect()) == set(sensor.quantities)


@pytest.mark.parametrize("cls", DRIVERS, ids=lambda c: c.PART)
def test_an_address_the_part_cannot_have(cls: type[I2CSensor], board: Board) -> None:
    with pytest.raises(InvalidAddressError) as info:
        cls(board.bus(1), 0x10)
    assert str(info.value) == (f"{cls.PART} cannot sit at 0x10 (its addresses: {ALLOWED[cls]})")


@pytest.mark.parametrize(
    ("cls", "settings", "message"),
    [
        (BME280, {"filter_coefficient": 3}, "filter coefficient must be one of 0, 2, 4, 8, 16"),
        (BME280, {"oversampling_t": 0}, "temperature oversampling must be one of 1, 2, 4, 8, 16"),
        (BME280, {"oversampling_p": 3}, "pressure oversampling must be one of 1, 2, 4, 8, 16"),
        (BME280, {"oversampling_h": 32}, "humidity oversampling must be one of 1, 2, 4, 8, 16"),
        (BMP280, {"oversampling_p": 5}, "pressure oversampling must be one of 1, 2, 4, 8, 16"),
        (SHT3x, {"repeatability": "max"}, "repeatability must be 'high', 'medium' or 'low'"),
        (SHT4x, {"precision": "max"}, "precision must be 'high', 'medium' or 'low'"),
        (BH1750, {"mode": "fast"}, "mode must be 'high', 'high2' or 'low'"),
        (BH1750, {"mtreg": 30}, "MTreg must be within 31..254"),
        (BH1750, {"mtreg": 255}, "MTreg must be within 31..254"),
    ],
)
def test_unsupported_settings_say_what_is_allowed(
    cls: type[I2CSensor], settings: dict[str, Any], message: str, board: Board
) -> None:
    with pytest.raises(ValueError) as info:
        cls(board.bus(1), **settings)
    assert str(info.value) == message


@pytest.mark.parametrize("mtreg", [31, 254])
def test_bh1750_mtreg_limits_are_inclusive(mtreg: int, board: Board) -> None:
    assert BH1750(board.bus(1), mtreg=mtreg).measurement_time_s == pytest.approx(0.180 * mtreg / 69)


@pytest.mark.parametrize("skipped", [{"oversampling_p": 0}, {"oversampling_h": 0}])
def test_a_skipped_stage_is_accepted(skipped: dict[str, int], board: Board) -> None:
    BME280(board.bus(1), **skipped)


def test_bme280_calibration_is_none_until_set_up(board: Board, clock: ManualClock) -> None:
    sensor = BME280(board.bus(1), sleep=clock.sleep, monotonic=clock.monotonic)
    assert sensor.calibration is None
    sensor.setup()
    chip = board.chip(1, 0x76)
    assert isinstance(chip, SimBME280)
    assert sensor.calibration == chip.calibration
