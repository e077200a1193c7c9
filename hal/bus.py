"""The I2C bus interface every driver talks to.

A driver receives an :class:`I2CBus` and a 7-bit address; it never opens hardware
itself. Two implementations exist: :class:`hal.smbus_backend.SMBusI2C` (the only
code that opens ``/dev/i2c-*``) and :class:`hal.sim.board.SimBus` (simulated chips
answering at the register / command level).

Transfers are expressed as the chip sees them on the wire:

* ``write(addr, data)``       START addr+W data... STOP
* ``read(addr, n)``           START addr+R n bytes STOP
* ``write_read(addr, data, n)`` START addr+W data, repeated START addr+R n bytes STOP
  (``i2c_rdwr`` with two messages: the "register read" of most chips)

The register helpers (``read_register``, ``write_register``) are thin conveniences
over those three. Every failure is a :class:`hal.exc.I2CError` carrying ``errno``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from hal.exc import InvalidAddressError

#: The range of 7-bit addresses a device may use (0x00-0x02 and 0x78-0x7F are reserved).
FIRST_ADDRESS = 0x03
LAST_ADDRESS = 0x77


def check_address(address: int) -> int:
    """Return ``address`` if it is a usable 7-bit I2C address, else raise."""
    if not isinstance(address, int) or not FIRST_ADDRESS <= address <= LAST_ADDRESS:
        raise InvalidAddressError(
            f"I2C address {address!r} is outside 0x{FIRST_ADDRESS:02x}..0x{LAST_ADDRESS:02x}"
        )
    return address


@runtime_checkable
class I2CBus(Protocol):
    """One I2C bus (adapter), addressed by 7-bit device addresses."""

    @property
    def number(self) -> int:
        """The bus number (N in ``/dev/i2c-N``)."""
        ...

    def write(self, address: int, data: bytes) -> None:
        """Write ``data`` to the device in one transfer."""
        ...

    def read(self, address: int, length: int) -> bytes:
        """Read ``length`` bytes from the device in one transfer."""
        ...

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        """Write ``data``, then read ``length`` bytes after a repeated START."""
        ...

    def close(self) -> None:
        """Release the bus."""
        ...


def read_register(bus: I2CBus, address: int, register: int, length: int = 1) -> bytes:
    """Read ``length`` bytes starting at an 8-bit register (auto-increment)."""
    return bus.write_read(address, bytes([register]), length)


def read_u8(bus: I2CBus, address: int, register: int) -> int:
    """Read one 8-bit register."""
    return read_register(bus, address, register, 1)[0]


def write_register(bus: I2CBus, address: int, register: int, value: int) -> None:
    """Write one 8-bit register (register pointer, then the value)."""
    bus.write(address, bytes([register, value & 0xFF]))
