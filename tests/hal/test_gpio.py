"""Status LED and reprovision button on gpiozero's MockFactory pins.

Timing-dependent checks wait for events with deadlines (never a fixed sleep for
something that can be awaited); the one negative check (a short press must not
trigger) necessarily waits past the hold time, bounded.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockPin

from hal.exc import GPIOError, PinUnavailableError
from hal.gpio import LedPattern, ReprovisionButton, StatusLed, mock_pin_factory

LED_PIN = 17
BUTTON_PIN = 27


@pytest.fixture
def factory() -> Iterator[Any]:
    factory: Any = mock_pin_factory()
    yield factory
    factory.close()


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """gpiozero's blink and hold threads must be gone once devices are closed."""
    before = set(threading.enumerate())
    yield
    assert _wait_for(lambda: set(threading.enumerate()) <= before), [
        t.name for t in set(threading.enumerate()) - before
    ]


def _wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_patterns_are_distinct() -> None:
    blinks = [p.blink for p in LedPattern]
    assert len(set(blinks)) == len(blinks) == 5
    assert LedPattern.CONNECTED.blink.steady
    assert not any(p.blink.steady for p in LedPattern if p is not LedPattern.CONNECTED)


def test_connected_is_steady_on_and_close_turns_it_off(factory: Any) -> None:
    led = StatusLed(LED_PIN, pin_factory=factory)
    pin = factory.pin(LED_PIN)
    led.show(LedPattern.CONNECTED)
    assert pin.state
    assert led.pattern is LedPattern.CONNECTED
    led.close()
    assert not pin.state
    led.close()  # idempotent
    assert led.pattern is None


@pytest.mark.parametrize("pattern", [LedPattern.ERROR, LedPattern.PROVISIONING])
def test_blinking_patterns_toggle_the_pin_with_their_rhythm(
    factory: Any, pattern: LedPattern
) -> None:
    led = StatusLed(LED_PIN, pin_factory=factory)
    pin = factory.pin(LED_PIN)
    pin.clear_states()
    led.show(pattern)
    # Wait for on -> off -> on: two full edges after the first.
    assert _wait_for(
        lambda: len(pin.states) >= 4, timeout_s=5 * (pattern.blink.on_s + pattern.blink.off_s)
    )
    led.close()
    states = list(pin.states)
    assert [bool(s.state) for s in states[1:4]] == [True, False, True]
    on_time = states[2].timestamp  # states record the time since the previous change
    # Late is possible on a loaded machine, early is not; the bounds still tell the
    # 0.1 s ERROR flicker from the 0.5 s PROVISIONING blink.
    assert pattern.blink.on_s - 0.02 <= on_time <= pattern.blink.on_s + 0.25


def test_offline_is_a_short_blip_then_a_long_pause(factory: Any) -> None:
    led = StatusLed(LED_PIN, pin_factory=factory)
    pin = factory.pin(LED_PIN)
    pin.clear_states()
    led.show(LedPattern.OFFLINE)
    assert _wait_for(lambda: len(pin.states) >= 3)  # off (initial), on, off
    states = list(pin.states)
    assert [bool(s.state) for s in states[1:3]] == [True, False]
    assert 0.1 - 0.02 <= states[2].timestamp <= 0.1 + 0.25
    # Still dark well past the ERROR flicker's 0.1 s and PROVISIONING's 0.5 s pause
    # (a bounded wait for something that must not happen).
    assert not _wait_for(lambda: bool(pin.state), timeout_s=0.6)
    led.close()


def test_show_same_pattern_twice_does_not_restart(factory: Any) -> None:
    led = StatusLed(LED_PIN, pin_factory=factory)
    pin = factory.pin(LED_PIN)
    pin.clear_states()
    led.show(LedPattern.OFFLINE)
    assert _wait_for(lambda: len(pin.states) >= 3 and not pin.state)  # first blip over
    # A restarted blink would light the LED at once; an unchanged one stays dark 1.9 s.
    led.show(LedPattern.OFFLINE)
    assert not _wait_for(lambda: bool(pin.state), timeout_s=0.3)
    led.show(LedPattern.CONNECTED)
    assert _wait_for(lambda: bool(pin.state))
    led.close()


def test_closed_devices_raise_hal_errors(factory: Any) -> None:
    led = StatusLed(LED_PIN, pin_factory=factory)
    led.close()
    with pytest.raises(PinUnavailableError, match="closed"):
        led.show(LedPattern.ERROR)  # and no blink thread is left behind (fixture)
    button = ReprovisionButton(BUTTON_PIN, lambda: None, pin_factory=factory)
    button.close()
    with pytest.raises(PinUnavailableError, match="closed"):
        _ = button.is_pressed
    button.close()


def test_long_press_requests_reprovisioning(factory: Any) -> None:
    pressed = threading.Event()
    button = ReprovisionButton(BUTTON_PIN, pressed.set, hold_time_s=0.05, pin_factory=factory)
    pin = factory.pin(BUTTON_PIN)
    pin.drive_low()  # pressed (to ground, pull-up)
    assert pressed.wait(3.0)
    assert button.is_pressed
    pin.drive_high()
    button.close()


def test_short_press_does_nothing(factory: Any) -> None:
    pressed = threading.Event()
    button = ReprovisionButton(BUTTON_PIN, pressed.set, hold_time_s=0.2, pin_factory=factory)
    pin = factory.pin(BUTTON_PIN)
    pin.drive_low()
    pin.drive_high()
    assert not pressed.wait(0.4)
    button.close()


def test_pin_in_use_is_a_hal_error(factory: Any) -> None:
    led = StatusLed(LED_PIN, pin_factory=factory)
    with pytest.raises(PinUnavailableError) as info:
        StatusLed(LED_PIN, pin_factory=factory)
    assert isinstance(info.value, GPIOError) and isinstance(info.value, OSError)
    assert "17" in str(info.value)
    led.close()


def test_invalid_pin_is_a_hal_error(factory: Any) -> None:
    with pytest.raises(PinUnavailableError):
        ReprovisionButton("GPIO99", lambda: None, pin_factory=factory)
    with pytest.raises(ValueError):
        ReprovisionButton(BUTTON_PIN, lambda: None, hold_time_s=0, pin_factory=factory)


def test_mock_backend_supplies_a_mock_pin_factory() -> None:
    from hal.backend import open_backend

    backend = open_backend("mock")
    factory: Any = backend.pin_factory
    assert type(factory).__name__ == "MockFactory"
    assert id(backend.pin_factory) == id(factory)  # one factory per backend
    led = StatusLed(LED_PIN, pin_factory=factory)
    led.show(LedPattern.CONNECTED)
    assert factory.pin(LED_PIN).state
    led.close()
    backend.close()


class _FailingPin(MockPin):  # type: ignore[misc]  # gpiozero is untyped
    """A mock pin whose output driver fails once ``broken`` is set (a damaged GPIO)."""

    broken = False

    def _set_state(self, value: float) -> None:
        if self.broken:
            raise OSError(errno.EIO, "pin driver failed")
        super()._set_state(value)


def test_a_pin_that_cannot_be_driven(factory: Any) -> None:
    pin = factory.pin(LED_PIN, pin_class=_FailingPin)
    led = StatusLed(LED_PIN, pin_factory=factory)
    pin.broken = True
    with pytest.raises(PinUnavailableError, match="cannot drive") as info:
        led.show(LedPattern.CONNECTED)
    assert isinstance(info.value.__cause__, OSError)
    assert led.pattern is None  # not shown
    led.close()  # does not raise, and still releases the pin
    with pytest.raises(PinUnavailableError, match="closed"):
        led.show(LedPattern.CONNECTED)
    pin.broken = False
    StatusLed(LED_PIN, pin_factory=factory).close()  # the pin was released: not "in use"
