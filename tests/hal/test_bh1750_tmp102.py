"""BH1750 and TMP102 drivers against the simulated chips."""

from __future__ import annotations

import pytest

from hal.drivers.bh1750 import BH1750
from hal.drivers.tmp102 import TMP102
from hal.exc import ChipIdMismatch, MeasurementTimeout
from hal.sim.bh1750 import SimBH1750
from hal.sim.board import Board
from hal.sim.clock import ManualClock
from hal.sim.tmp102 import SimTMP102
from tests.hal.conftest import PINNED


def test_bh1750_reads_the_environment_and_powers_down(board: Board, clock: ManualClock) -> None:
    sensor = BH1750(board.bus(1), 0x23, sleep=clock.sleep)
    reading = sensor.read()
    # One count is 1/1.2 lx at H-resolution.
    assert reading["illuminance_lux"] == pytest.approx(PINNED["illuminance_lux"], abs=1 / 1.2)
    assert clock.sleeps[-1] == pytest.approx(0.180)
    chip = board.chip(1, 0x23)
    assert isinstance(chip, SimBH1750)
    assert chip.powered is False  # one-time mode powers down by itself


@pytest.mark.parametrize(
    ("mtreg", "wait_s"), [(31, 0.180 * 31 / 69), (138, 0.360), (254, 0.180 * 254 / 69)]
)
def test_bh1750_mtreg_scales_the_wait_not_the_result(
    mtreg: int, wait_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = BH1750(board.bus(1), 0x23, sleep=clock.sleep, mtreg=mtreg)
    reading = sensor.read()
    assert clock.sleeps[-1] == pytest.approx(wait_s)
    chip = board.chip(1, 0x23)
    assert isinstance(chip, SimBH1750) and chip.mtreg == mtreg
    resolution = 1 / 1.2 * 69 / mtreg
    assert reading["illuminance_lux"] == pytest.approx(PINNED["illuminance_lux"], abs=resolution)


def test_bh1750_without_power_on_measures_nothing(board: Board, clock: ManualClock) -> None:
    """The simulated chip follows the datasheet's flow: measure commands need power on."""
    bus = board.bus(1)
    bus.write(0x23, b"\x00")  # power down
    bus.write(0x23, b"\x20")  # one-time H-res: ignored while powered down
    clock.sleep(0.2)
    assert bus.read(0x23, 2) == b"\x00\x00"


def test_tmp102_one_shot(board: Board, clock: ManualClock) -> None:
    sensor = TMP102(board.bus(1), 0x48, sleep=clock.sleep)
    reading = sensor.read()
    assert reading["temperature_c"] == pytest.approx(PINNED["temperature_c"], abs=0.0625)
    assert clock.sleeps == [0.035]
    chip = board.chip(1, 0x48)
    assert isinstance(chip, SimTMP102)
    assert chip.shutdown  # the driver keeps it in shutdown between one-shots


def test_tmp102_extended_mode_register(board: Board, clock: ManualClock) -> None:
    board.environment.set(temperature_c=130.0)  # beyond 12-bit range only in EM
    bus = board.bus(1)
    bus.write(0x48, bytes([0x01, 0x60, 0xB0]))  # continuous, EM=1
    clock.sleep(0.3)
    raw = int.from_bytes(bus.write_read(0x48, b"\x00", 2), "big")
    assert raw & 1 == 1
    assert raw == (0x0820 << 3) | 1  # 130 °C = 2080 * 0.0625 (table 6 format)


def test_tmp102_never_ready_times_out(board: Board) -> None:
    sensor = TMP102(board.bus(1), 0x48, sleep=lambda s: None)
    with pytest.raises(MeasurementTimeout):
        sensor.read()


def test_tmp102_identity_check(board: Board, clock: ManualClock) -> None:
    chip = board.chip(1, 0x48)
    assert isinstance(chip, SimTMP102)
    original = chip._config_as_read
    chip._config_as_read = lambda: bytes([0x05, 0x83])  # type: ignore[method-assign]  # ADS1115-like
    with pytest.raises(ChipIdMismatch, match="R1:R0"):
        TMP102(board.bus(1), 0x48, sleep=clock.sleep).read()
    chip._config_as_read = original  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "case",
    [
        # BH1750FVI datasheet: one-time H-resolution 0x20, H-resolution mode 2 0x21 (half the
        # lux per count), L-resolution 0x23; maximum times 180 ms (H) and 24 ms (L).
        ("high", 0x20, 0.180, 1 / 1.2),
        ("high2", 0x21, 0.180, 0.5 / 1.2),
        ("low", 0x23, 0.024, 1 / 1.2),
    ],
)
def test_bh1750_modes(
    case: tuple[str, int, float, float], board: Board, clock: ManualClock
) -> None:
    mode, opcode, wait_s, lux_per_count = case
    sensor = BH1750(board.bus(1), 0x23, sleep=clock.sleep, mode=mode)  # type: ignore[arg-type]
    sensor.setup()
    board.log.clear()
    clock.sleeps.clear()
    reading = sensor.read()
    writes = [t.data for t in board.log if t.kind == "write"]
    assert writes[-1] == bytes([opcode])
    assert clock.sleeps == [pytest.approx(wait_s)]
    assert reading["illuminance_lux"] == pytest.approx(PINNED["illuminance_lux"], abs=lux_per_count)
