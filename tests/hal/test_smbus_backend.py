"""The real backend's error translation, on this machine's real files and ioctls.

No I2C adapter is needed: a missing ``/dev/i2c-N`` gives ENOENT as on a Pi with
I2C disabled, and a regular file opened as a bus makes the kernel refuse the
``I2C_RDWR`` ioctl (ENOTTY), which must arrive as an :class:`I2CError` with that
errno. Two smbus2 stand-ins sit at the ioctl edge for the rest: one raises the
kernel's I2C errnos; the other, :class:`hal.sim.stub.StubAdapter` (like
Linux's ``i2c-stub``), carries the real ``i2c_msg`` structures to a simulated
board, so the successful path (messages built, read buffers filled) runs through
the real backend and drivers.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from hal.backend import open_backend
from hal.drivers.bme280 import BME280
from hal.drivers.sht3x import SHT3x
from hal.exc import BusUnavailableError, I2CError, InvalidAddressError, UnknownBackendError
from hal.sim.board import Board
from hal.sim.clock import ManualClock
from hal.sim.stub import StubAdapter
from hal.smbus_backend import SMBusBackend
from tests.hal.conftest import PINNED


def test_open_backend_smbus_opens_nothing_until_asked() -> None:
    backend = open_backend("smbus")
    assert backend.kind == "smbus"
    assert backend.pin_factory is None
    backend.close()


def test_backends_are_named_explicitly() -> None:
    with pytest.raises(UnknownBackendError, match="smbus, mock"):
        open_backend("fake")  # type: ignore[arg-type]
    with pytest.raises(UnknownBackendError, match="default"):
        open_backend("mock", mock_board="nonesuch")


def test_missing_bus_device(tmp_path: Path) -> None:
    backend = SMBusBackend(path_template=str(tmp_path / "i2c-{}"))
    with pytest.raises(BusUnavailableError) as info:
        backend.bus(1)
    assert info.value.errno == errno.ENOENT
    assert info.value.path == str(tmp_path / "i2c-1")
    assert "dtparam=i2c_arm=on" in str(info.value)
    assert isinstance(info.value, OSError)


def test_real_dev_path_for_a_bus_that_does_not_exist() -> None:
    backend = SMBusBackend()
    with pytest.raises(BusUnavailableError) as info:
        backend.bus(250)
    assert info.value.path == "/dev/i2c-250"


def test_a_file_that_is_no_adapter(tmp_path: Path) -> None:
    # smbus2 asks the adapter for its functionality (I2C_FUNCS ioctl) on open.
    (tmp_path / "i2c-5").write_bytes(b"")
    backend = SMBusBackend(path_template=str(tmp_path / "i2c-{}"))
    with pytest.raises(BusUnavailableError) as info:
        backend.bus(5)
    assert info.value.errno == errno.ENOTTY
    assert "not an I2C adapter" in str(info.value)


def test_addresses_are_checked_before_the_kernel_is_asked() -> None:
    kernel = _KernelSays(errno.EIO)
    bus = SMBusBackend(smbus_class=kernel).bus(1)
    with pytest.raises(InvalidAddressError):
        bus.read(0x80, 1)
    assert kernel.calls == []


class _KernelSays:
    """Stands in for smbus2.SMBus at the ioctl edge: every transfer fails with one errno."""

    def __init__(self, err: int) -> None:
        self.err = err
        self.closed = False
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, path: str) -> _KernelSays:
        return self

    def i2c_rdwr(self, *msgs: Any) -> None:
        self.calls.append(msgs)
        raise OSError(self.err, "simulated kernel error")

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("err", [errno.EREMOTEIO, errno.ENXIO, errno.EIO, errno.ETIMEDOUT])
def test_kernel_errnos_are_kept(err: int) -> None:
    kernel = _KernelSays(err)
    backend = SMBusBackend(smbus_class=kernel)
    sensor = BME280(backend.bus(1), 0x76, sleep=lambda s: None)
    with pytest.raises(I2CError) as info:
        sensor.read()
    assert info.value.errno == err
    assert info.value.is_nack == (err in (errno.EREMOTEIO, errno.ENXIO))
    assert isinstance(info.value.__cause__, OSError)
    # A register read is one combined transfer: write pointer + read, two messages.
    assert len(kernel.calls[0]) == 2
    assert (info.value.bus, info.value.address) == (1, 0x76)
    assert "d0" in str(info.value)
    backend.close()
    assert kernel.closed


def test_drivers_read_through_the_real_backend(board: Board, clock: ManualClock) -> None:
    adapter = StubAdapter(board)
    backend = SMBusBackend(smbus_class=adapter)
    bme = BME280(backend.bus(1), 0x76, sleep=clock.sleep)
    reading = bme.read()
    assert reading["temperature_c"] == pytest.approx(PINNED["temperature_c"], abs=0.01)
    assert reading["pressure_hpa"] == pytest.approx(PINNED["pressure_hpa"], abs=0.02)
    assert reading["humidity_pct"] == pytest.approx(PINNED["humidity_pct"], abs=0.05)
    assert adapter.paths == ["/dev/i2c-1"]  # opened once, on first use
    # The chip id read: one ioctl, pointer written then one byte read after a repeated START.
    assert adapter.calls[0] == [(0x76, False, b"\xd0"), (0x76, True, b"\x60")]
    # The calibration: 26 bytes from 0x88 in one combined transfer.
    (calibration,) = [call for call in adapter.calls if call[0][2] == b"\x88"]
    assert [(m[1], len(m[2])) for m in calibration] == [(False, 1), (True, 26)]
    # Command-level parts: a plain write, then a plain read, one message per ioctl.
    sht = SHT3x(backend.bus(1), 0x44, sleep=clock.sleep)
    adapter.calls.clear()
    assert sht.read()["humidity_pct"] == pytest.approx(PINNED["humidity_pct"], abs=0.003)
    # Soft reset, status command, status word, measurement command, data.
    assert [(m[1], len(m[2])) for call in adapter.calls for m in call] == [
        (False, 2), (False, 2), (True, 3), (False, 2), (True, 6),
    ]  # fmt: skip
    assert [len(call) for call in adapter.calls] == [1] * 5
    backend.close()


def test_a_vanished_chip_through_the_real_backend(board: Board, clock: ManualClock) -> None:
    backend = SMBusBackend(smbus_class=StubAdapter(board))
    sensor = BME280(backend.bus(1), 0x76, sleep=clock.sleep)
    sensor.read()
    board.remove(1, 0x76)
    with pytest.raises(I2CError) as info:
        sensor.read()
    assert info.value.errno == errno.ENXIO and info.value.is_nack
    board.restore(1, 0x76)
    assert "pressure_hpa" in sensor.read()
    backend.close()


def test_a_closed_bus_refuses_transfers_without_asking_the_kernel() -> None:
    kernel = _KernelSays(errno.EIO)
    backend = SMBusBackend(smbus_class=kernel)
    bus = backend.bus(1)
    backend.close()
    backend.close()
    with pytest.raises(I2CError) as info:
        bus.write_read(0x76, b"\xd0", 1)
    assert info.value.errno == errno.EBADF and "closed" in str(info.value)
    assert kernel.calls == [] and kernel.closed
