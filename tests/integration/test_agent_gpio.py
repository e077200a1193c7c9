"""The status LED follows the lifecycle; a long button press reprovisions (mock GPIO pins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.lifecycle import State
from tests.support.agentcloud import AgentThread, Cloud, issue_device, wait_until, write_config

pytestmark = pytest.mark.integration
LED_PIN, BUTTON_PIN = 17, 27


def test_led_shows_state_and_long_press_reprovisions(cloud: Cloud, tmp_path: Path) -> None:
    import hal

    device = issue_device(cloud, "dev-button")
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        hal_extra=f"led_pin = {LED_PIN}\nbutton_pin = {BUTTON_PIN}\nbutton_hold_s = 0.2",
    )
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        led = agent.daemon.hardware.led
        wait_until(lambda: led.pattern is hal.LedPattern.CONNECTED, what="LED steady on")
        factory = agent.daemon.hardware.backend.pin_factory
        button = factory.pin(BUTTON_PIN)
        # A short press does nothing.
        button.drive_low()
        button.drive_high()
        assert cloud.client.registration_attempts("dev-button") == 1
        # A long press asks for reprovisioning, through the loop.
        button.drive_low()
        wait_until(
            lambda: cloud.client.registration_attempts("dev-button") == 2,
            what="a DPS registration after the long press",
        )
        button.drive_high()
        agent.wait_state(State.CONNECTED)
        assert agent.daemon.status()["lastReprovisionReason"] == "button long press"
        assert agent.stop() == 0
    assert led.pattern is None  # released on shutdown
