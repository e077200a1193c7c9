"""The real I2C backend: Linux i2c-dev through smbus2. The only module that opens
``/dev/i2c-*``.

Every transfer goes through ``i2c_rdwr`` (the ``I2C_RDWR`` ioctl), so a register
read is one combined write + repeated-START + read transaction, as the chips
expect. ``OSError`` from the kernel becomes :class:`hal.exc.I2CError` with the
errno kept (``EREMOTEIO`` / ``ENXIO`` NACK, ``EIO``, ``ETIMEDOUT``); a bus that
cannot be opened becomes :class:`hal.exc.BusUnavailableError` with a hint.
Buses are opened on first use, not at construction, and each has a lock so
transfers from several threads never interleave.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import Any

from hal.bus import check_address
from hal.drivers.base import Monotonic, Sleep
from hal.exc import BusUnavailableError, I2CError

DEFAULT_PATH_TEMPLATE = "/dev/i2c-{}"

_HINTS = {
    errno.ENOENT: "is I2C enabled? (dtparam=i2c_arm=on in config.txt, or raspi-config)",
    errno.EACCES: "the service user needs to be in group 'i2c'",
    errno.EPERM: "the service user needs to be in group 'i2c'",
    errno.ENOTTY: "this file is not an I2C adapter",
}


class SMBusI2C:
    """One Linux I2C adapter, driven through smbus2."""

    def __init__(self, number: int, path: str, smbus_class: Callable[[str], Any]) -> None:
        self._number = number
        self._path = path
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._smbus = smbus_class(path)
        except OSError as exc:
            err = exc.errno or errno.EIO
            raise BusUnavailableError(err, number, path, _HINTS.get(err, "")) from exc

    @property
    def number(self) -> int:
        """The bus number (N in ``/dev/i2c-N``)."""
        return self._number

    def write(self, address: int, data: bytes) -> None:
        """Write ``data`` to the device in one transfer."""
        from smbus2 import i2c_msg

        self._transfer(address, f"write {data.hex()}", i2c_msg.write(address, data))

    def read(self, address: int, length: int) -> bytes:
        """Read ``length`` bytes from the device in one transfer."""
        from smbus2 import i2c_msg

        msg = i2c_msg.read(address, length)
        self._transfer(address, f"read {length}", msg)
        return bytes(msg)

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        """Write ``data`` then read ``length`` bytes after a repeated START."""
        from smbus2 import i2c_msg

        msg = i2c_msg.read(address, length)
        self._transfer(
            address, f"write {data.hex()} + read {length}", i2c_msg.write(address, data), msg
        )
        return bytes(msg)

    def close(self) -> None:
        """Close the file descriptor of the bus; later transfers fail with ``EBADF``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._smbus.close()

    def _transfer(self, address: int, operation: str, *msgs: Any) -> None:
        check_address(address)
        with self._lock:
            if self._closed:
                raise I2CError(errno.EBADF, self._number, address, f"{operation} (bus closed)")
            try:
                self._smbus.i2c_rdwr(*msgs)
            except OSError as exc:
                raise I2CError(exc.errno or errno.EIO, self._number, address, operation) from exc


class SMBusBackend:
    """The real hardware: ``/dev/i2c-N`` for each bus asked for."""

    kind = "smbus"

    def __init__(
        self,
        *,
        path_template: str = DEFAULT_PATH_TEMPLATE,
        smbus_class: Callable[[str], Any] | None = None,
    ) -> None:
        if smbus_class is None:
            from smbus2 import SMBus

            smbus_class = SMBus
        self._smbus_class = smbus_class
        self._path_template = path_template
        self._buses: dict[int, SMBusI2C] = {}
        self._lock = threading.Lock()

    @property
    def sleep(self) -> Sleep:
        """Real time: drivers wait with :func:`time.sleep`."""
        return time.sleep

    @property
    def monotonic(self) -> Monotonic:
        """Real time: :func:`time.monotonic`."""
        return time.monotonic

    @property
    def pin_factory(self) -> object | None:
        """None: gpiozero picks the real pin factory of the board."""
        return None

    def bus(self, number: int) -> SMBusI2C:
        """The bus ``number``, opened on first use."""
        with self._lock:
            if number not in self._buses:
                path = self._path_template.format(number)
                self._buses[number] = SMBusI2C(number, path, self._smbus_class)
            return self._buses[number]

    def close(self) -> None:
        """Close every bus opened so far."""
        with self._lock:
            buses, self._buses = list(self._buses.values()), {}
        for bus in buses:
            bus.close()
