"""Hub rejection and requested reprovisioning: the agent goes back to DPS and moves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.lifecycle import State
from agent.store.files import STATE_FILE
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    wait_methods_online,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration


def other_hub(cloud: Cloud, hub_hostname: str) -> str:
    return "hub2" if cloud.hub_of(hub_hostname) == "hub1" else "hub1"


def connected_hub(agent: AgentThread) -> str:
    hub = agent.daemon.status()["hub"]
    assert isinstance(hub, str)
    return hub


def wait_connected_to(agent: AgentThread, hub_hostname: str, timeout_s: float = 15.0) -> None:
    wait_until(
        lambda: agent.state is State.CONNECTED and connected_hub(agent) == hub_hostname,
        timeout_s=timeout_s,
        what=f"agent connected to {hub_hostname}",
    )


def telemetry_from(cloud: Cloud, device_id: str, hub: str, since: int) -> None:
    messages = cloud.client.wait_for_telemetry(
        since=since, device_id=device_id, hub=hub, count=2, timeout_s=10
    )
    assert all(m.hub == hub for m in messages)


@pytest.mark.parametrize("how", ["disabled", "deleted"])
def test_rejected_by_its_hub_the_agent_reprovisions_and_telemetry_continues(
    cloud: Cloud, tmp_path: Path, how: str
) -> None:
    device = issue_device(cloud, f"dev-{how}")
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        first = connected_hub(agent)
        old, new = cloud.hub_of(first), other_hub(cloud, first)
        # DPS now allocates to the other hub only; then the operator acts on the old one.
        cloud.client.set_group_allocation("default", "hashed", [new])
        since = cloud.client.last_sequence_number()
        if how == "disabled":
            cloud.client.disable_device(device_id := f"dev-{how}", hub=old)
        else:
            cloud.client.delete_device(device_id := f"dev-{how}", hub=old)
        wait_connected_to(agent, cloud.hub_host(new))
        telemetry_from(cloud, device_id, new, since)
        assert cloud.client.registration_attempts(device_id) == 2
        assert agent.stop() == 0
    saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert saved["assignment"]["assignedHub"] == cloud.hub_host(new)
    assert "CONNACK" in saved["lastReprovisionReason"]


def test_hub_refuses_at_first_connect_on_a_warm_boot(cloud: Cloud, tmp_path: Path) -> None:
    device = issue_device(cloud, "dev-refused")
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        first = connected_hub(agent)
        assert agent.stop() == 0
    # While the agent is off, the device is disabled in its hub and DPS moves to the other.
    new = other_hub(cloud, first)
    cloud.client.disable_device("dev-refused", hub=cloud.hub_of(first))
    cloud.client.set_group_allocation("default", "hashed", [new])
    since = cloud.client.last_sequence_number()
    with AgentThread(config) as agent:
        wait_connected_to(agent, cloud.hub_host(new))
        telemetry_from(cloud, "dev-refused", new, since)
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-refused") == 2


def test_reprovision_by_direct_method_moves_the_device(cloud: Cloud, tmp_path: Path) -> None:
    device = issue_device(cloud, "dev-method")
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        wait_methods_online(cloud, "dev-method")
        first = connected_hub(agent)
        new = other_hub(cloud, first)
        cloud.client.set_group_allocation("default", "hashed", [new])
        since = cloud.client.last_sequence_number()
        status, payload = cloud.client.invoke_method("dev-method", "reprovision", {}, timeout_s=5)
        assert status == 202, payload
        assert payload["message"] == "reprovisioning"
        wait_connected_to(agent, cloud.hub_host(new))
        telemetry_from(cloud, "dev-method", new, since)
        assert agent.daemon.status()["lastReprovisionReason"] == "direct method"

        def reported() -> dict[str, object]:
            return dict(cloud.client.get_twin("dev-method")["properties"]["reported"])

        wait_until(
            lambda: (
                reported().get("lastReprovisionReason") == "direct method"
                and reported().get("hub") == cloud.hub_host(new)
            ),
            what="the new hub and the reason in reported properties",
        )
        assert agent.stop() == 0


def test_budget_holds_when_the_hub_keeps_rejecting(cloud: Cloud, tmp_path: Path) -> None:
    device = issue_device(cloud, "dev-budget")
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        lifecycle={"reprovision_budget": 3, "reprovision_window_s": 3600.0},
    )
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        hub = cloud.hub_of(connected_hub(agent))
        # DPS keeps assigning the same hub, where the device stays disabled.
        cloud.client.set_group_allocation("default", "hashed", [hub])
        cloud.client.disable_device("dev-budget", hub=hub)
        machine = agent.daemon.machine
        assert machine is not None
        wait_until(
            lambda: not machine.budget_allows() and machine.state is State.HUB_BACKOFF,
            timeout_s=30,
            what="the budget spent, and the agent still trying the hub",
        )
        # First boot + 2 reprovisionings = the budget of 3; the hub is still tried, slowly.
        assert cloud.client.registration_attempts("dev-budget") == 3
        tried = machine.rejections
        wait_until(lambda: machine.rejections >= tried + 2, timeout_s=30, what="2 more hub tries")
        assert agent.state is not State.REPROVISION_WAIT
        status_file = tmp_path / "state" / "status.json"
        status = wait_until(
            lambda: (doc := json.loads(status_file.read_text()))["state"] == "HUB_BACKOFF" and doc,
            what="status.json to say HUB_BACKOFF",
        )
        assert "refused the device" in status["description"]
        assert agent.stop() == 0
    # A restart (a crash loop) does not get a fresh budget.
    with AgentThread(config) as agent:
        wait_until(
            lambda: (m := agent.daemon.machine) is not None and m.rejections >= 2,
            timeout_s=30,
            what="the hub refusing the restarted agent twice",
        )
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-budget") == 3
