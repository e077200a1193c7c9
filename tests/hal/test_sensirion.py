"""SHT3x / SHT4x drivers against the command-level simulated chips."""

from __future__ import annotations

import errno

import pytest

from hal.crc import words_with_crc
from hal.drivers.sht3x import SHT3x
from hal.drivers.sht4x import SHT4x
from hal.exc import CRCError, I2CError
from hal.sim.board import Board
from hal.sim.clock import ManualClock
from hal.sim.sensirion import SimSHT3x, SimSHT4x
from tests.hal.conftest import PINNED


@pytest.mark.parametrize(("cls", "address"), [(SHT3x, 0x44), (SHT4x, 0x45)])
def test_reads_the_environment(
    cls: type[SHT3x] | type[SHT4x], address: int, board: Board, clock: ManualClock
) -> None:
    reading = cls(board.bus(1), address, sleep=clock.sleep).read()
    assert set(reading) == {"temperature_c", "humidity_pct"}
    # 16-bit words: 175/65535 °C and 100/65535 %RH per count.
    assert reading["temperature_c"] == pytest.approx(PINNED["temperature_c"], abs=0.003)
    assert reading["humidity_pct"] == pytest.approx(PINNED["humidity_pct"], abs=0.003)


@pytest.mark.parametrize(
    ("repeatability", "command", "wait_s"),
    [("high", b"\x24\x00", 0.0155), ("medium", b"\x24\x0b", 0.0065), ("low", b"\x24\x16", 0.0045)],
)
def test_sht3x_command_and_wait(
    repeatability: str, command: bytes, wait_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = SHT3x(board.bus(1), 0x44, sleep=clock.sleep, repeatability=repeatability)  # type: ignore[arg-type]
    sensor.setup()
    clock.sleeps.clear()
    board.log.clear()
    sensor.read()
    assert clock.sleeps == [wait_s]
    assert board.log[0].data == command


@pytest.mark.parametrize(
    ("precision", "command", "wait_s"),
    [("high", b"\xfd", 0.0083), ("medium", b"\xf6", 0.0045), ("low", b"\xe0", 0.0016)],
)
def test_sht4x_command_and_wait(
    precision: str, command: bytes, wait_s: float, board: Board, clock: ManualClock
) -> None:
    sensor = SHT4x(board.bus(1), 0x45, sleep=clock.sleep, precision=precision)  # type: ignore[arg-type]
    sensor.setup()
    clock.sleeps.clear()
    board.log.clear()
    sensor.read()
    assert clock.sleeps == [wait_s]
    assert board.log[0].data == command


def test_sht4x_serial_number(board: Board, clock: ManualClock) -> None:
    sensor = SHT4x(board.bus(1), 0x45, sleep=clock.sleep)
    sensor.setup()
    chip = board.chip(1, 0x45)
    assert isinstance(chip, SimSHT4x)
    assert sensor.serial_number == chip.serial_number


def test_reading_before_the_measurement_ends_is_nacked(board: Board) -> None:
    """The simulator is faithful: no clock stretching, so an early read header gets a NACK."""
    bus = board.bus(1)
    bus.write(0x44, b"\x24\x00")
    with pytest.raises(I2CError) as info:
        bus.read(0x44, 6)
    assert info.value.errno == errno.EREMOTEIO


@pytest.mark.parametrize(("cls", "address"), [(SHT3x, 0x44), (SHT4x, 0x45)])
def test_bad_crc_raises_then_recovers(
    cls: type[SHT3x] | type[SHT4x], address: int, board: Board, clock: ManualClock
) -> None:
    sensor = cls(board.bus(1), address, sleep=clock.sleep)
    sensor.setup()
    board.corrupt_crc(1, address, count=1)
    with pytest.raises(CRCError) as info:
        sensor.read()
    assert info.value.sensor == sensor.name
    assert info.value.expected != info.value.received
    assert sensor.read()["temperature_c"] == pytest.approx(PINNED["temperature_c"], abs=0.003)


def test_sht4x_humidity_is_cropped(board: Board, clock: ManualClock) -> None:
    # At 100 %RH the chip's raw word (55574) converts to 100.0002: cropped to 100.
    board.environment.set(humidity_pct=100.0)
    assert SHT4x(board.bus(1), 0x45, sleep=clock.sleep).read()["humidity_pct"] == 100.0
    board.environment.set(humidity_pct=0.0)
    low = SHT4x(board.bus(1), 0x45, sleep=clock.sleep).read()["humidity_pct"]
    assert 0.0 <= low < 0.002


def test_sht4x_nacks_an_sht3x_command(board: Board) -> None:
    with pytest.raises(I2CError) as info:
        board.bus(1).write(0x45, b"\xf3\x2d")
    assert info.value.is_nack


def test_sht3x_flags_an_unknown_command_in_its_status(board: Board) -> None:
    bus = board.bus(1)

    def status() -> int:
        bus.write(0x44, b"\xf3\x2d")
        (word,) = words_with_crc("sht3x", bus.read(0x44, 3))
        return word

    assert not status() & 0x0002
    bus.write(0x44, b"\x89")  # an SHT4x command, truncated for an SHT3x
    with pytest.raises(I2CError):
        bus.read(0x44, 6)  # no data pending: NACK
    assert status() & 0x0002  # "last command not processed"
    assert status() & 0x0002  # reading the status does not clear it
    bus.write(0x44, b"\x30\x41")  # clear status: a valid command
    assert not status() & 0x0002


class _SHT3xWithBadHumidityCRC(SimSHT3x):
    """An SHT31 whose humidity word (the second of a measurement) carries a bad CRC."""

    def read(self, length: int) -> bytes:
        data = bytearray(super().read(length))
        if len(data) == 6:
            data[5] ^= 0x01
        return bytes(data)


def test_sht3x_checks_the_crc_of_every_word(clock: ManualClock) -> None:
    board = Board(clock=clock)
    board.attach(1, 0x44, _SHT3xWithBadHumidityCRC())
    sensor = SHT3x(board.bus(1), 0x44, sleep=clock.sleep)
    with pytest.raises(CRCError) as info:
        sensor.read()
    assert info.value.received == info.value.expected ^ 0x01
