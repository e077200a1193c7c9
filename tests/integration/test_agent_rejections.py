"""Rejections with the real agent against devcloud: nothing stranded, DPS not stormed.

* The issue's episode with every lifecycle timing scaled by 1/10: a device disabled for
  15 s (150 s) is back within 30 s (5 min) of being enabled, with at most 3 DPS
  registrations in the whole episode.

The budget over 10 restarts of the real process on a full state disk is
``tests/faults/test_disk_faults.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

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
ROOT = Path(__file__).resolve().parents[2]
#: The lifecycle defaults (agent.config.LifecycleConfig) scaled by this.
SCALE = 0.1
SCALED = {
    "backoff_base_s": 1.0 * SCALE,
    "backoff_cap_s": 300.0 * SCALE,
    "long_outage_s": 1200.0 * SCALE,
    "dps_backoff_cap_s": 600.0 * SCALE,
    "rejected_retry_s": 300.0 * SCALE,
    "rejected_hub_retry_s": 120.0 * SCALE,
    "reprovision_budget": 6,
    "reprovision_window_s": 3600.0 * SCALE,
    "connect_timeout_s": 3.0,
}


def test_a_device_disabled_for_a_while_comes_back_by_itself_without_storming_dps(
    cloud: Cloud, tmp_path: Path
) -> None:
    device = issue_device(cloud, "dev-episode")
    config = write_config(
        tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state", lifecycle=SCALED
    )
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        wait_methods_online(cloud, "dev-episode")
        machine = agent.daemon.machine
        assert machine is not None and machine.assignment is not None
        hub = cloud.hub_of(machine.assignment.assigned_hub)
        cloud.client.set_group_allocation("default", "hashed", [hub])  # DPS: the same hub
        before = cloud.client.registration_attempts("dev-episode")
        cloud.client.disable_device("dev-episode", hub=hub)  # drops the connection
        wait_until(lambda: machine.rejections >= 1, what="the hub refusing the device")
        # The episode is a duration, not an event: the device stays disabled 150 s / 10.
        time.sleep(150.0 * SCALE)
        assert agent.state is not State.REPROVISION_WAIT
        since = cloud.client.last_sequence_number()
        enabled_at = time.monotonic()
        cloud.client.enable_device("dev-episode", hub=hub)
        cloud.client.wait_for_telemetry(
            since=since, device_id="dev-episode", timeout_s=300.0 * SCALE
        )
        back_after = time.monotonic() - enabled_at
        registrations = cloud.client.registration_attempts("dev-episode") - before
        assert agent.stop() == 0
    assert registrations <= 3, registrations
    assert back_after <= 300.0 * SCALE
