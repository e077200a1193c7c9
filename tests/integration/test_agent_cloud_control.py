"""Desired properties and direct methods, from devcloud's service API to the running agent."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from agent.core.lifecycle import State
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    wait_methods_online,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration
DEVICE = "dev-control"


@pytest.fixture
def agent(cloud: Cloud, tmp_path: Path) -> Iterator[AgentThread]:
    device = issue_device(cloud, DEVICE)
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    with AgentThread(config) as running:
        running.wait_state(State.CONNECTED)
        wait_methods_online(cloud, DEVICE)
        yield running
        assert running.stop() == 0


def reported(cloud: Cloud) -> dict[str, Any]:
    return dict(cloud.client.get_twin(DEVICE)["properties"]["reported"])


def wait_reported(cloud: Cloud, check: Any, what: str) -> dict[str, Any]:
    return wait_until(lambda: (doc := reported(cloud)) and check(doc) and doc, what=what)


def test_reported_properties_after_connect(cloud: Cloud, agent: AgentThread) -> None:
    doc = wait_reported(cloud, lambda d: "agentVersion" in d, "reported properties")
    assert doc["agentVersion"] == __version__
    assert doc["hub"] == agent.daemon.status()["hub"]
    assert doc["lastReprovisionReason"] == "first boot: no cached assignment"
    assert doc["sensorErrors"] == {}
    assert doc["deviceId"] == DEVICE
    assert doc["provisionedAt"]
    assert set(doc["sensors"]) == {"sht4x@1:0x45", "bme280@1:0x76"}
    assert doc["sensors"]["sht4x@1:0x45"]["units"] == {
        "temperature_c": "degC",
        "humidity_pct": "%RH",
    }
    assert doc["telemetryIntervalSeconds"]["value"] == 0.2


def test_desired_interval_change_is_applied_and_acknowledged(
    cloud: Cloud, agent: AgentThread
) -> None:
    twin = cloud.client.patch_twin_desired(DEVICE, {"telemetryIntervalSeconds": 1})
    version = twin["properties"]["desired"]["$version"]
    doc = wait_reported(
        cloud,
        lambda d: d.get("telemetryIntervalSeconds", {}).get("av") == version,
        "interval acknowledgement",
    )
    assert doc["telemetryIntervalSeconds"] == {
        "value": 1,
        "ac": 200,
        "av": version,
        "ad": "applied",
    }
    assert agent.daemon.settings.telemetry_interval_s == 1.0
    # Telemetry now comes about every second, not every 0.2 s.
    since = cloud.client.last_sequence_number()
    messages = cloud.client.wait_for_telemetry(since=since, device_id=DEVICE, count=3, timeout_s=8)
    stamps = [datetime.fromisoformat(m.json()["timestamp"]) for m in messages]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert all(0.9 <= gap <= 1.5 for gap in gaps), gaps


def test_invalid_desired_value_is_rejected_not_applied(cloud: Cloud, agent: AgentThread) -> None:
    twin = cloud.client.patch_twin_desired(
        DEVICE, {"telemetryIntervalSeconds": -5, "sensors": {"bme280@1:0x76": {"enabled": "nope"}}}
    )
    version = twin["properties"]["desired"]["$version"]
    doc = wait_reported(
        cloud,
        lambda d: d.get("telemetryIntervalSeconds", {}).get("av") == version,
        "rejection acknowledgement",
    )
    ack = doc["telemetryIntervalSeconds"]
    assert ack["ac"] == 400 and ack["value"] == 0.2 and "between" in ack["ad"]
    sensor_ack = doc["sensors"]["bme280@1:0x76"]["enabled"]
    assert sensor_ack["ac"] == 400 and sensor_ack["av"] == version
    assert agent.daemon.settings.telemetry_interval_s == 0.2


def test_disabling_a_sensor_through_the_twin(cloud: Cloud, agent: AgentThread) -> None:
    cloud.client.patch_twin_desired(DEVICE, {"sensors": {"bme280@1:0x76": {"enabled": False}}})
    wait_until(
        lambda: "bme280@1:0x76" in agent.daemon.settings.disabled_sensors, what="sensor disabled"
    )
    since = cloud.client.last_sequence_number()
    (message,) = cloud.client.wait_for_telemetry(since=since, device_id=DEVICE, timeout_s=5)
    assert set(message.json()["readings"]) == {"sht4x@1:0x45"}


def test_methods_answer_and_bad_payloads_are_rejected(cloud: Cloud, agent: AgentThread) -> None:
    status, payload = cloud.client.invoke_method(DEVICE, "getStatus", None, timeout_s=5)
    assert status == 200
    assert payload["state"] == "CONNECTED" and payload["deviceId"] == DEVICE
    assert payload["sensors"] == ["sht4x@1:0x45", "bme280@1:0x76"]
    assert payload["uptimeS"] > 0 and payload["lastTelemetry"]["sequence"] >= 1

    status, payload = cloud.client.invoke_method(
        DEVICE, "setTelemetryInterval", {"seconds": 3}, timeout_s=5
    )
    assert (status, payload) == (200, {"telemetryIntervalSeconds": 3})
    assert agent.daemon.settings.telemetry_interval_s == 3.0

    for name, bad in [
        ("setTelemetryInterval", {"seconds": "soon"}),
        ("setTelemetryInterval", {"seconds": 0}),
        ("setTelemetryInterval", None),
        ("reprovision", {"force": "yes"}),
        ("reprovision", [1, 2]),
    ]:
        status, payload = cloud.client.invoke_method(DEVICE, name, bad, timeout_s=5)
        assert status == 400, (name, bad, payload)
        assert payload["message"]
    status, payload = cloud.client.invoke_method(DEVICE, "selfDestruct", {}, timeout_s=5)
    assert status == 404 and "selfDestruct" in payload["message"]
    # None of that disturbed the agent.
    assert agent.state is State.CONNECTED
    assert agent.daemon.settings.telemetry_interval_s == 3.0
