"""First boot, warm boot, one-shot provision, WebSockets: the real agent against devcloud."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__
from agent.config import DEFAULT_MODEL_ID, load_config
from agent.core.lifecycle import State
from agent.store.files import STATE_FILE
from agent.store.status import read_status
from devcloud.app import AllocationRequest, AllocationResult
from tests.support.agentcloud import AgentThread, Cloud, issue_device, running_cloud, write_config

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


def test_mqtt_over_websockets_end_to_end(tmp_path: Path) -> None:
    with running_cloud(tmp_path, websockets=True) as cloud:
        device = issue_device(cloud, "dev-ws")
        config = write_config(
            tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state", websockets=True
        )
        assert config.dps.transport == "websockets" and config.hub.transport == "websockets"
        with AgentThread(config) as agent:
            agent.wait_state(State.CONNECTED)
            cloud.client.wait_for_telemetry(device_id="dev-ws", count=2, timeout_s=10)
            status, _ = cloud.client.invoke_method("dev-ws", "getStatus", None, timeout_s=5)
            assert status == 200
            assert agent.stop() == 0


def test_provision_command_uses_custom_allocation_then_run_skips_dps(
    cloud: Cloud, tmp_path: Path
) -> None:
    seen: list[AllocationRequest] = []

    def allocate(request: AllocationRequest) -> AllocationResult:
        # Custom allocation on what the device says about itself.
        seen.append(request)
        sensors = request.payload["sensors"]
        hub = cloud.hub_host("hub2" if "bme280@1:0x76" in sensors else "hub1")
        return AllocationResult(hub, payload={"site": "lab-2"})

    cloud.handle.set_custom_allocator(allocate)
    cloud.client.set_group_allocation("default", "custom", ["hub1", "hub2"])
    device = issue_device(cloud, "dev-oneshot")
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(tmp_path / "agent.toml"),
            "provision",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assignment = json.loads(result.stdout)
    assert assignment["deviceId"] == "dev-oneshot"
    assert assignment["assignedHub"] == cloud.hub_host("hub2")
    assert assignment["payload"] == {"site": "lab-2"}
    (request,) = seen
    assert request.payload == {
        "model": "integration-test",
        "agentVersion": __version__,
        "sensors": ["sht4x@1:0x45", "bme280@1:0x76"],
        "modelId": DEFAULT_MODEL_ID,
    }
    assert cloud.client.registration_attempts("dev-oneshot") == 1
    config = load_config(tmp_path / "agent.toml")
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        assert agent.daemon.status()["hub"] == assignment["assignedHub"]
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-oneshot") == 1
