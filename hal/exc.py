"""Every error the HAL raises, rooted in :class:`HALError`.

As in gpiozero's ``exc.py``, each leaf also subclasses the builtin that fits, so a
caller that only knows Python's exceptions still catches it sensibly
(``except OSError`` sees a bus failure, ``except ValueError`` sees a bad checksum).
Errors carry data (errno, bus, address, the bytes at fault), not just text.
smbus2 / gpiozero exceptions are translated at the boundary with ``raise ... from exc``.

Policy for callers (the agent): a :class:`SensorError` or :class:`I2CError` from
``Sensor.read()`` is per-sensor and transient as far as the HAL knows (report it,
go on, the next read retries from scratch); :class:`BusUnavailableError`,
:class:`UnknownPartError` and :class:`InvalidAddressError` at start-up are
configuration or installation problems.
"""

from __future__ import annotations

import errno as _errno

#: errno values that mean "nobody acknowledged" (address or data NACK).
NACK_ERRNOS = frozenset({_errno.EREMOTEIO, _errno.ENXIO})


class HALError(Exception):
    """Root of every error the HAL raises on purpose."""


# -- buses ---------------------------------------------------------------------------


class I2CError(HALError, OSError):
    """An I2C transfer failed; ``errno`` says how.

    ``EREMOTEIO`` / ``ENXIO``: no ACK (chip absent, busy or refusing the byte);
    ``EIO``: a generic bus error; ``ETIMEDOUT``: the bus is stuck (SDA or SCL held low).
    """

    def __init__(self, err: int, bus: int, address: int | None, operation: str) -> None:
        self.bus = bus
        self.address = address
        self.operation = operation
        where = f"i2c-{bus}" if address is None else f"i2c-{bus} 0x{address:02x}"
        name = _errno.errorcode.get(err, str(err))
        super().__init__(err, f"{where}: {operation} failed: {name} ({_describe(err)})")

    def __str__(self) -> str:
        return str(self.strerror)

    @property
    def is_nack(self) -> bool:
        """True when the chip did not acknowledge (absent, busy, or refusing)."""
        return self.errno in NACK_ERRNOS

    @property
    def is_timeout(self) -> bool:
        """True when the bus timed out (typically stuck low)."""
        return self.errno == _errno.ETIMEDOUT


class BusUnavailableError(HALError, OSError):
    """The bus device (``/dev/i2c-N``) cannot be opened; ``errno`` and ``path`` say why."""

    def __init__(self, err: int, bus: int, path: str, hint: str = "") -> None:
        self.bus = bus
        self.path = path
        self.hint = hint
        text = f"cannot open {path}: {_errno.errorcode.get(err, str(err))} ({_describe(err)})"
        if hint:
            text = f"{text}; {hint}"
        super().__init__(err, text)

    def __str__(self) -> str:
        return str(self.strerror)


class InvalidAddressError(HALError, ValueError):
    """A 7-bit I2C address outside 0x03..0x77, or a part at an address it cannot have."""


class UnknownBackendError(HALError, ValueError):
    """``open_backend`` was asked for a backend or mock board that does not exist, or
    a simulated chip was asked for (to inject a fault) where the mock board has none."""


# -- sensors -------------------------------------------------------------------------


class SensorError(HALError):
    """A sensor answered, but not with a usable measurement."""

    def __init__(self, sensor: str, message: str) -> None:
        self.sensor = sensor
        super().__init__(f"{sensor}: {message}")


class UnknownPartError(SensorError, ValueError):
    """A sensor spec names a part no driver handles."""

    def __init__(self, part: str, known: tuple[str, ...]) -> None:
        self.part = part
        self.known = known
        super().__init__(part, f"unknown part; known parts: {', '.join(known)}")


class ChipIdMismatch(SensorError, ValueError):
    """The chip at the address identifies itself as another part."""

    def __init__(
        self,
        sensor: str,
        expected: int | tuple[int, ...],
        found: int,
        *,
        what: str = "chip id",
    ) -> None:
        self.expected = expected
        self.found = found
        want = (
            f"0x{expected:02x}"
            if isinstance(expected, int)
            else " or ".join(f"0x{e:02x}" for e in expected)
        )
        super().__init__(sensor, f"{what} 0x{found:02x}, expected {want}")


class CRCError(SensorError, ValueError):
    """A data word arrived with a checksum that does not match it."""

    def __init__(self, sensor: str, data: bytes, expected: int, received: int) -> None:
        self.data = data
        self.expected = expected
        self.received = received
        super().__init__(
            sensor,
            f"CRC mismatch on word 0x{data.hex()}: computed 0x{expected:02x}, "
            f"received 0x{received:02x}",
        )


class MeasurementTimeout(SensorError, TimeoutError):
    """The chip still reported "measuring" after the datasheet's maximum time."""

    def __init__(self, sensor: str, waited_s: float) -> None:
        self.waited_s = waited_s
        super().__init__(sensor, f"measurement not ready after {waited_s * 1000:.1f} ms")


class ConversionNotReady(SensorError):
    """``collect()`` was called before the conversion ``start()`` began is done.

    ``remaining_s`` says when to ask again. Nothing is lost: the conversion stays
    pending and the driver stays set up, so calling ``collect()`` again after
    ``remaining_s`` is all it takes. (No builtin fits: this is the caller's timing,
    not a failure of the chip.)
    """

    def __init__(self, sensor: str, remaining_s: float) -> None:
        self.remaining_s = remaining_s
        super().__init__(sensor, f"conversion not ready for another {remaining_s * 1000:.1f} ms")


class InvalidReadingError(SensorError, ValueError):
    """The chip returned a value it uses to mean "no measurement" (e.g. BME280 0x80000)."""


# -- GPIO ----------------------------------------------------------------------------


class GPIOError(HALError):
    """A GPIO pin could not be set up or driven (wraps gpiozero's errors)."""


class PinUnavailableError(GPIOError, OSError):
    """No usable pin factory, or the pin is invalid or already in use."""


def _describe(err: int) -> str:
    import os

    return os.strerror(err)
