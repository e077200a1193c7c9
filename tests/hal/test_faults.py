"""Fault injection on the simulated board, and how drivers and errors carry it."""

from __future__ import annotations

import errno

import pytest

from hal.drivers.bme280 import BME280
from hal.drivers.sht3x import SHT3x
from hal.exc import (
    BusUnavailableError,
    ChipIdMismatch,
    CRCError,
    HALError,
    I2CError,
    InvalidAddressError,
    MeasurementTimeout,
    SensorError,
)
from hal.sim.board import Board
from hal.sim.clock import ManualClock


def test_error_hierarchy_has_one_root_and_builtin_leaves() -> None:
    for cls, builtin in [
        (I2CError, OSError),
        (BusUnavailableError, OSError),
        (InvalidAddressError, ValueError),
        (ChipIdMismatch, ValueError),
        (CRCError, ValueError),
        (MeasurementTimeout, TimeoutError),
    ]:
        assert issubclass(cls, HALError) and issubclass(cls, builtin), cls
    assert issubclass(CRCError, SensorError)


def test_i2c_error_keeps_errno_bus_and_address() -> None:
    exc = I2CError(errno.ETIMEDOUT, 3, 0x76, "read 2")
    assert (exc.errno, exc.bus, exc.address) == (errno.ETIMEDOUT, 3, 0x76)
    assert exc.is_timeout and not exc.is_nack
    assert "i2c-3 0x76" in str(exc) and "ETIMEDOUT" in str(exc)


@pytest.mark.parametrize("count", [1, 3])
def test_nack_for_a_number_of_transfers_then_recovery(
    board: Board, clock: ManualClock, count: int
) -> None:
    sensor = SHT3x(board.bus(1), 0x44, sleep=clock.sleep)
    board.nack(1, 0x44, count=count)
    for _ in range(count):
        with pytest.raises(I2CError) as info:
            sensor.read()
        assert info.value.errno == errno.EREMOTEIO
        assert info.value.address == 0x44
    assert "temperature_c" in sensor.read()


def test_nack_until_cleared(board: Board, clock: ManualClock) -> None:
    sensor = SHT3x(board.bus(1), 0x44, sleep=clock.sleep)
    board.nack(1, 0x44)
    for _ in range(5):
        with pytest.raises(I2CError):
            sensor.read()
    board.clear_faults()
    assert "humidity_pct" in sensor.read()


def test_stuck_bus_times_out_every_chip(board: Board, clock: ManualClock) -> None:
    board.stick(1)
    for sensor in (
        SHT3x(board.bus(1), 0x44, sleep=clock.sleep),
        BME280(board.bus(1), 0x76, sleep=clock.sleep),
    ):
        with pytest.raises(I2CError) as info:
            sensor.read()
        assert info.value.is_timeout
    board.unstick(1)
    assert BME280(board.bus(1), 0x76, sleep=clock.sleep).read()


def test_io_error(board: Board, clock: ManualClock) -> None:
    board.io_error(1, 0x76, count=1)
    sensor = BME280(board.bus(1), 0x76, sleep=clock.sleep)
    with pytest.raises(I2CError) as info:
        sensor.read()
    assert info.value.errno == errno.EIO
    assert sensor.read()


def test_fault_mid_measurement_forces_a_fresh_setup(board: Board, clock: ManualClock) -> None:
    sensor = BME280(board.bus(1), 0x76, sleep=clock.sleep)
    sensor.read()
    board.io_error(1, 0x76, count=1)
    with pytest.raises(I2CError):
        sensor.read()
    board.log.clear()
    sensor.read()
    # The next read starts again from identification (chip id register 0xD0).
    assert board.log[0].data == b"\xd0"


def test_nobody_at_an_address_is_enxio(board: Board) -> None:
    with pytest.raises(I2CError) as info:
        board.bus(1).read(0x10, 1)
    assert info.value.errno == errno.ENXIO


def test_unknown_bus_is_unavailable(board: Board) -> None:
    with pytest.raises(BusUnavailableError) as info:
        board.bus(9)
    assert info.value.errno == errno.ENOENT and info.value.bus == 9


def test_invalid_addresses_are_refused(board: Board) -> None:
    for address in (0x00, 0x02, 0x78, 0x7F, 0x100, -1):
        with pytest.raises(InvalidAddressError):
            board.bus(1).read(address, 1)
    with pytest.raises(InvalidAddressError, match="0x76"):
        SHT3x(board.bus(1), 0x76)


def test_closed_sensor_refuses_to_read(board: Board, clock: ManualClock) -> None:
    sensor = SHT3x(board.bus(1), 0x44, sleep=clock.sleep)
    sensor.read()
    sensor.close()
    sensor.close()
    with pytest.raises(SensorError, match="closed"):
        sensor.read()


def test_close_on_a_vanished_chip_does_not_raise(board: Board, clock: ManualClock) -> None:
    from hal.drivers.bh1750 import BH1750

    sensor = BH1750(board.bus(1), 0x23, sleep=clock.sleep)
    sensor.read()
    board.remove(1, 0x23)
    sensor.close()
    assert [t.error for t in board.log][-1] == errno.ENXIO  # it did try to power down


def test_one_sensor_read_from_many_threads(board: Board) -> None:
    """Reads serialise per sensor: concurrent reads never interleave their transfers."""
    import threading

    from hal.sim.clock import RealClock

    real = Board(clock=RealClock())
    from hal.sim.bosch import SimBME280

    real.attach(1, 0x76, SimBME280())
    sensor = BME280(real.bus(1), 0x76)
    results: list[dict[str, float]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                results.append(sensor.read())
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and len(results) == 12
