"""The real backend's error translation, on this machine's real files and ioctls.

No I2C adapter is needed: a missing ``/dev/i2c-N`` gives ENOENT as on a Pi with
I2C disabled, and a regular file opened as a bus makes the kernel refuse the
``I2C_RDWR`` ioctl (ENOTTY), which must arrive as an :class:`I2CError` with that
errno. A smbus2 stand-in that raises the kernel's I2C errnos covers the rest.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from hal.backend import open_backend
from hal.drivers.bme280 import BME280
from hal.exc import BusUnavailableError, I2CError, InvalidAddressError, UnknownBackendError
from hal.smbus_backend import SMBusBackend


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
