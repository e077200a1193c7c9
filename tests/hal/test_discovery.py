"""Scanning buses, identifying parts, opening sensors from specs or ``auto``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal.backend import MockBackend, open_backend
from hal.discovery import PARTS, Found, open_sensors, parse_spec, scan
from hal.discovery import canonical_part as discovery_canonical_part
from hal.exc import (
    BusUnavailableError,
    ChipIdMismatch,
    I2CError,
    InvalidAddressError,
    UnknownPartError,
)
from hal.parts import ALIASES, PART_NAMES, canonical_part
from hal.sensor import UNITS, SensorSpec
from hal.sim.board import Board
from hal.sim.boards import build_board
from hal.sim.clock import ManualClock
from hal.sim.sensirion import SimSHT3x, SimSHT4x

DEFAULT_PARTS = {
    (1, 0x23): "BH1750",
    (1, 0x44): "SHT3x",
    (1, 0x45): "SHT4x",
    (1, 0x48): "TMP102",
    (1, 0x76): "BME280",
    (1, 0x77): "BMP280",
}


def test_scan_identifies_every_part_of_the_default_board(backend: MockBackend) -> None:
    found = scan(backend, [1])
    assert {(f.bus, f.address): f.part for f in found} == DEFAULT_PARTS
    sht4x = next(f for f in found if f.part == "SHT4x")
    chip = backend.board.chip(1, 0x45)
    assert isinstance(chip, SimSHT4x)
    assert f"{chip.serial_number:08x}" in sht4x.detail


def test_scan_two_buses() -> None:
    backend = open_backend("mock", mock_board="dual", clock=ManualClock())
    found = scan(backend, [1, 3])
    assert {(f.bus, f.address): f.part for f in found} == {
        **DEFAULT_PARTS,
        (3, 0x49): "TMP102",
        (3, 0x76): "BMP280",
    }


def test_sht3x_at_0x45_and_sht4x_at_0x44_are_told_apart() -> None:
    clock = ManualClock()
    board = Board(clock=clock)
    board.attach(1, 0x44, SimSHT4x())
    board.attach(1, 0x45, SimSHT3x())
    found = scan(MockBackend(board), [1])
    assert [(f.address, f.part) for f in found] == [(0x44, "SHT4x"), (0x45, "SHT3x")]


def test_scan_of_an_empty_bus() -> None:
    backend = open_backend("mock", mock_board="empty", clock=ManualClock())
    assert scan(backend, [1]) == []


def test_scan_skips_a_removed_chip_but_raises_on_a_stuck_bus(backend: MockBackend) -> None:
    backend.board.remove(1, 0x76)
    assert (1, 0x76) not in {(f.bus, f.address) for f in scan(backend, [1])}
    backend.board.stick(1)
    with pytest.raises(I2CError) as info:
        scan(backend, [1])
    assert info.value.is_timeout


def test_unidentified_chip_is_reported_without_a_part(board: Board) -> None:
    from hal.sim.bosch import SimBME280

    class OtherBosch(SimBME280):
        CHIP_ID = 0x61  # a BME680

    extra = Board(clock=board.clock)
    extra.attach(1, 0x77, OtherBosch())
    (found,) = scan(MockBackend(extra), [1])
    assert found.part is None and "0x61" in found.detail
    with pytest.raises(UnknownPartError):
        found.spec()


def test_scan_of_a_missing_bus(backend: MockBackend) -> None:
    with pytest.raises(BusUnavailableError):
        scan(backend, [2])


def test_open_sensors_auto_reads_everything(backend: MockBackend) -> None:
    sensors = open_sensors(backend, "auto", [1])
    assert {s.part for s in sensors} == set(DEFAULT_PARTS.values())
    for sensor in sensors:
        reading = sensor.read()
        assert set(reading) == set(sensor.quantities)
        assert set(reading) <= set(UNITS)


def test_open_sensors_from_specs(backend: MockBackend) -> None:
    specs = [SensorSpec("BME280", 1, 0x76, name="indoor"), parse_spec("sht31@1:0x44")]
    sensors = open_sensors(backend, specs)
    assert [s.name for s in sensors] == ["indoor", "sht3x@1:0x44"]
    assert [s.part for s in sensors] == ["BME280", "SHT3x"]


def test_open_sensors_reports_a_missing_chip(backend: MockBackend) -> None:
    backend.board.remove(1, 0x76)
    with pytest.raises(I2CError) as info:
        open_sensors(backend, [SensorSpec("BME280", 1, 0x76)])
    assert info.value.is_nack and "0x76" in str(info.value)
    # Tolerated on request: the sensor comes back when the chip does.
    (sensor,) = open_sensors(backend, [SensorSpec("BME280", 1, 0x76)], require_present=False)
    with pytest.raises(I2CError):
        sensor.read()
    backend.board.restore(1, 0x76)
    assert "pressure_hpa" in sensor.read()


def test_open_sensors_refuses_the_wrong_part(backend: MockBackend) -> None:
    with pytest.raises(ChipIdMismatch):
        open_sensors(backend, [SensorSpec("BME280", 1, 0x77)])


def test_open_sensors_refuses_bad_specs(backend: MockBackend) -> None:
    with pytest.raises(UnknownPartError, match="known parts"):
        open_sensors(backend, [SensorSpec("DHT22", 1, 0x40)])
    with pytest.raises(InvalidAddressError):
        open_sensors(backend, [SensorSpec("BME280", 1, 0x44)])
    with pytest.raises(InvalidAddressError, match="both"):
        open_sensors(backend, [SensorSpec("BME280", 1, 0x76), SensorSpec("BMP280", 1, 0x76)])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BME280@1:0x76", SensorSpec("BME280", 1, 0x76)),
        ("bme280@1:0x76", SensorSpec("BME280", 1, 0x76)),
        ("SHT40@0:0x45", SensorSpec("SHT4x", 0, 0x45)),
        ("tmp102@11:72", SensorSpec("TMP102", 11, 0x48)),
        (" BH1750 @ 1 : 0x5C ", SensorSpec("BH1750", 1, 0x5C)),
    ],
)
def test_parse_spec(text: str, expected: SensorSpec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    "text", ["BME280", "BME280@1", "BME280@x:0x76", "@1:0x76", "BME280@1:0x7f"]
)
def test_parse_spec_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_spec(text)


@given(st.text(max_size=30))
def test_parse_spec_never_fails_otherwise(text: str) -> None:
    try:
        spec = parse_spec(text)
    except ValueError:
        return
    assert canonical_part(spec.part) == spec.part


def test_found_spec_round_trip() -> None:
    assert Found(1, 0x76, "BME280", "chip id 0x60").spec() == SensorSpec("BME280", 1, 0x76)


def test_a_board_per_seed_is_deterministic() -> None:
    a = build_board("default", seed=42, clock=ManualClock())
    b = build_board("default", seed=42, clock=ManualClock())
    sa, sb = a.chip(1, 0x45), b.chip(1, 0x45)
    assert isinstance(sa, SimSHT4x) and isinstance(sb, SimSHT4x)
    assert sa.serial_number == sb.serial_number


def test_the_light_part_table_names_exactly_the_drivers() -> None:
    assert tuple(PARTS) == PART_NAMES
    assert all(canonical_part(alias) in PARTS for alias in ALIASES)
    assert {canonical_part(name.lower()) for name in PARTS} == set(PARTS)
    assert discovery_canonical_part is canonical_part  # still importable from hal.discovery


@pytest.mark.parametrize("part", ["DHT22", "", "BME28", "sht3"])
def test_canonical_part_refuses_unknown_names(part: str) -> None:
    with pytest.raises(UnknownPartError) as info:
        canonical_part(part)
    assert info.value.part == part and info.value.known == PART_NAMES


@pytest.mark.parametrize(("part", "address"), [("SHT4x", 0x44), ("SHT4x", 0x46), ("SHT3x", 0x45)])
def test_a_garbled_sensirion_answer_is_reported_not_hidden(part: str, address: int) -> None:
    board = Board(clock=ManualClock())
    board.attach(1, address, SimSHT4x() if part == "SHT4x" else SimSHT3x())
    board.corrupt_crc(1, address, count=1)
    (found,) = scan(MockBackend(board), [1])
    assert (found.address, found.part) == (address, None)
    assert "CRC mismatch" in found.detail
    (again,) = scan(MockBackend(board), [1])  # the fault was for one read only
    assert again.part == part
