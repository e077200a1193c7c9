"""First boot, warm boot, certificate replaced: the real agent against devcloud over TLS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.lifecycle import State
from agent.state import STATE_FILE, read_status
from tests.support.agentcloud import AgentThread, Cloud, issue_device, write_config

pytestmark = pytest.mark.integration


def test_first_boot_provisions_and_sends_telemetry_then_warm_boot_skips_dps(
    cloud: Cloud, tmp_path: Path
) -> None:
    device = issue_device(cloud, "dev-boot")
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    since = cloud.client.last_sequence_number()
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        messages = cloud.client.wait_for_telemetry(
            since=since, device_id="dev-boot", count=3, timeout_s=10
        )
        body = messages[0].json()
        assert body["readings"]["sht4x@1:0x45"]["temperature_c"]["unit"] == "degC"
        assert body["readings"]["bme280@1:0x76"]["pressure_hpa"]["unit"] == "hPa"
        assert messages[0].system_properties["$.ct"] == "application/json"
        assert messages[0].system_properties["$.ce"] == "utf-8"
        sequences = [m.json()["sequence"] for m in messages]
        assert sequences == sorted(sequences)
        assert cloud.client.registration_attempts("dev-boot") == 1
        hub = agent.daemon.status()["hub"]
        assert agent.stop() == 0
    saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert saved["assignment"]["assignedHub"] == hub
    status = read_status(tmp_path / "state")
    assert status["running"] is False
    # Warm boot: straight to the cached hub, no DPS call.
    since = cloud.client.last_sequence_number()
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        cloud.client.wait_for_telemetry(since=since, device_id="dev-boot", count=1, timeout_s=10)
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-boot") == 1
