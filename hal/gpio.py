"""GPIO through gpiozero: the status LED and the reprovisioning button.

gpiozero is imported only when a device is created. The pin factory is always
chosen by the caller: ``None`` lets gpiozero pick the board's real factory (and
fail loudly on a laptop), :func:`mock_pin_factory` gives a ``MockFactory`` whose
pins tests can drive (``pin.drive_low()``) and inspect (``pin.state``, ``pin.states``).
gpiozero errors become :class:`hal.exc.PinUnavailableError`.

LED patterns (on time, off time, in seconds), distinct by rhythm and duty cycle:

=============  ===========  =========================================
PROVISIONING   0.5 / 0.5    even 1 Hz blink: working on it
CONNECTED      steady on    all is well
OFFLINE        0.1 / 1.9    short blip every 2 s: alive, no cloud
ERROR          0.1 / 0.1    rapid 5 Hz flicker: needs attention
=============  ===========  =========================================
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from hal.exc import PinUnavailableError


@dataclass(frozen=True)
class Blink:
    """A blink rhythm; ``off_s == 0`` means steady on."""

    on_s: float
    off_s: float

    @property
    def steady(self) -> bool:
        """True for a steadily lit LED."""
        return self.off_s == 0


class LedPattern(Enum):
    """What the status LED shows."""

    PROVISIONING = Blink(0.5, 0.5)
    CONNECTED = Blink(1.0, 0.0)
    OFFLINE = Blink(0.1, 1.9)
    ERROR = Blink(0.1, 0.1)
    #: No identity yet (a fresh clone waiting for its certificate): a short flash each second.
    WAITING = Blink(0.2, 0.8)

    @property
    def blink(self) -> Blink:
        """The rhythm of this pattern."""
        value: Blink = self.value
        return value


def mock_pin_factory() -> object:
    """A new gpiozero ``MockFactory`` (simulated pins for tests and laptops)."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory()


def _gpio_error(what: str, pin: int | str, exc: Exception) -> PinUnavailableError:
    return PinUnavailableError(f"{what} on pin {pin}: {type(exc).__name__}: {exc}")


class StatusLed:
    """An LED on ``pin`` showing one :class:`LedPattern` at a time."""

    def __init__(self, pin: int | str, *, pin_factory: object | None = None) -> None:
        from gpiozero import LED
        from gpiozero.exc import GPIOZeroError

        self._pin = pin
        self._lock = threading.Lock()
        self._pattern: LedPattern | None = None
        try:
            self._led: Any = LED(pin, pin_factory=pin_factory)
        except (GPIOZeroError, OSError) as exc:
            raise _gpio_error("cannot set up the status LED", pin, exc) from exc

    @property
    def pattern(self) -> LedPattern | None:
        """The pattern shown now (None before the first :meth:`show` and after close)."""
        return self._pattern

    def show(self, pattern: LedPattern) -> None:
        """Show ``pattern`` (in the background); a no-op if it is already showing.

        Raises :class:`hal.exc.PinUnavailableError` once the LED is closed.
        """
        from gpiozero.exc import GPIOZeroError

        with self._lock:
            if self._led.closed:
                raise PinUnavailableError(f"the status LED on pin {self._pin} is closed")
            if pattern is self._pattern:
                return
            blink = pattern.blink
            try:
                if blink.steady:
                    self._led.on()
                else:
                    self._led.blink(on_time=blink.on_s, off_time=blink.off_s, background=True)
            except (GPIOZeroError, OSError) as exc:
                raise _gpio_error("cannot drive the status LED", self._pin, exc) from exc
            self._pattern = pattern

    def close(self) -> None:
        """Turn the LED off and release the pin; idempotent, and the pin is released
        even if it can no longer be driven."""
        from gpiozero.exc import GPIOZeroError

        with self._lock:
            self._pattern = None
            if not self._led.closed:
                with contextlib.suppress(GPIOZeroError, OSError):
                    self._led.off()  # also stops a blink
            self._led.close()


class ReprovisionButton:
    """A push button on ``pin`` (to ground, internal pull-up); holding it for
    ``hold_time_s`` calls ``on_long_press`` once per hold, from gpiozero's thread."""

    def __init__(
        self,
        pin: int | str,
        on_long_press: Callable[[], None],
        *,
        hold_time_s: float = 5.0,
        pin_factory: object | None = None,
    ) -> None:
        from gpiozero import Button
        from gpiozero.exc import GPIOZeroError

        if hold_time_s <= 0:
            raise ValueError("hold_time_s must be positive")
        self._pin = pin
        self._callback = on_long_press
        try:
            self._button: Any = Button(
                pin, pull_up=True, hold_time=hold_time_s, hold_repeat=False, pin_factory=pin_factory
            )
        except (GPIOZeroError, OSError) as exc:
            raise _gpio_error("cannot set up the reprovision button", pin, exc) from exc
        self._button.when_held = self._held

    @property
    def is_pressed(self) -> bool:
        """Whether the button is down right now; :class:`hal.exc.PinUnavailableError`
        once the button is closed."""
        if self._button.closed:
            raise PinUnavailableError(f"the reprovision button on pin {self._pin} is closed")
        return bool(self._button.is_pressed)

    def _held(self) -> None:
        self._callback()

    def close(self) -> None:
        """Release the pin; idempotent."""
        self._button.close()
