"""The device's hardware as the running agent holds it: sensors, status LED, button.

:class:`Hardware` opens the HAL backend, the configured sensors and the GPIO devices
once at start (:meth:`Hardware.open`), shows lifecycle states on the LED, reports what
is wrong (:meth:`Hardware.device_errors`) and closes it all at shutdown. A HAL that
cannot open degrades to no sensors, reported in the twin and status; one sensor that
does not answer is opened anyway and reports an error with every sample. GPIO is not
even imported when no pin is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.config import HalConfig
from agent.core import lifecycle

log = logging.getLogger("agent.runtime.daemon")


def led_pattern(state: lifecycle.State, *, identity_missing: bool = False) -> str:
    """The name of the :class:`hal.LedPattern` that shows ``state``.

    ``identity_missing``: IDENTITY_WAIT because there is no identity yet (``WAITING``),
    not an unusable one (``ERROR``).
    """
    match state:
        case lifecycle.State.IDENTITY_WAIT if identity_missing:
            return "WAITING"
        case lifecycle.State.CONNECTED:
            return "CONNECTED"
        case lifecycle.State.PROVISIONING | lifecycle.State.CONNECTING:
            return "PROVISIONING"
        case lifecycle.State.REPROVISION_WAIT | lifecycle.State.IDENTITY_WAIT:
            return "ERROR"
        case _:
            return "OFFLINE"


class Hardware:
    """The HAL backend, the sensors and the GPIO devices of one running agent."""

    def __init__(self) -> None:
        self.sensors: list[Any] = []
        #: Why the HAL (or GPIO) is unavailable; None if it works.
        self.hal_error: str | None = None
        #: The sensors' errors at the last sample, by sensor name.
        self.sensor_errors: dict[str, str] = {}
        self.backend: Any = None
        self.led: Any = None
        self.button: Any = None

    @property
    def sensor_names(self) -> list[str]:
        """The open sensors' names, in configuration order."""
        return [s.name for s in self.sensors]

    def open(self, cfg: HalConfig, *, on_long_press: Callable[[], None]) -> None:
        """Open the backend, the sensors and the GPIO devices; degrade, never raise."""
        import hal

        try:
            self.backend = hal.open_backend(cfg.backend, seed=cfg.mock_seed)
        except hal.HALError as exc:
            self.hal_error = f"{type(exc).__name__}: {exc}"
            log.error("HAL unavailable, running without sensors: %s", self.hal_error)
            return
        try:
            self.sensors = list(hal.open_sensors(self.backend, cfg.sensors, cfg.buses))
        except hal.HALError as exc:
            # One sensor that does not answer must not silence the others: open them all
            # anyway; the absent one reports an error with every sample until it answers.
            log.error("sensor set-up: %s; carrying on with the sensors that answer", exc)
            try:
                self.sensors = list(
                    hal.open_sensors(self.backend, cfg.sensors, cfg.buses, require_present=False)
                )
            except hal.HALError as again:
                self.hal_error = f"{type(again).__name__}: {again}"
                log.error("HAL unavailable, running without sensors: %s", self.hal_error)
        if cfg.led_pin is None and cfg.button_pin is None:
            return  # no GPIO: do not even import gpiozero
        factory = getattr(self.backend, "pin_factory", None)
        try:
            if cfg.led_pin is not None:
                self.led = hal.StatusLed(cfg.led_pin, pin_factory=factory)
            if cfg.button_pin is not None:
                self.button = hal.ReprovisionButton(
                    cfg.button_pin,
                    on_long_press,
                    hold_time_s=cfg.button_hold_s,
                    pin_factory=factory,
                )
        except hal.HALError as exc:
            self.hal_error = f"{type(exc).__name__}: {exc}"
            log.error("GPIO unavailable: %s", self.hal_error)

    def show(self, state: lifecycle.State, *, identity_missing: bool = False) -> None:
        """Show ``state`` on the status LED (if there is one)."""
        if self.led is None:
            return
        import hal

        try:
            self.led.show(hal.LedPattern[led_pattern(state, identity_missing=identity_missing)])
        except hal.HALError as exc:
            log.warning("LED: %s", exc)

    def device_errors(self) -> dict[str, str]:
        """The sensors' and the HAL's errors, as the twin and getStatus report them."""
        errors = dict(self.sensor_errors)
        if self.hal_error:
            errors["hal"] = self.hal_error
        return errors

    def close(self) -> None:
        """Close the button, the LED, the sensors and the backend (errors logged)."""
        for closer in (self.button, self.led, *self.sensors, self.backend):
            close: Callable[[], None] | None = getattr(closer, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:
                log.warning("closing %r: %s", closer, exc)
