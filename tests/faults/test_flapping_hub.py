"""A hub flapping between accepting and rejecting the device: the budget holds, and the
device comes back once the hub settles on accepting.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.core.lifecycle import State
from tests.support.agentcloud import AgentThread, Cloud, issue_device, write_config

BUDGET = 3
FLAPS = 5
FLAP_S = 0.5
#: Scaled "minutes": the issue's target is telemetry within 5 minutes of the enable.
COME_BACK_S = 30.0


def flapping_agent(cloud: Cloud, tmp_path: Path, device_id: str) -> AgentThread:
    """A connected agent whose device then flaps ``FLAPS`` times; ends enabled."""
    device = issue_device(cloud, device_id)
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        lifecycle={"reprovision_budget": BUDGET, "rejected_retry_s": 1.0},
    )
    agent = AgentThread(config).start()
    agent.wait_state(State.CONNECTED, timeout_s=20)
    for _ in range(FLAPS):  # the fault's own rhythm, not a wait for the agent
        cloud.client.disable_device(device_id)
        time.sleep(FLAP_S)
        cloud.client.enable_device(device_id)
        time.sleep(FLAP_S)
    return agent


def test_a_flapping_hub_never_spends_more_than_the_budget(cloud: Cloud, tmp_path: Path) -> None:
    agent = flapping_agent(cloud, tmp_path, "dev-flap")
    try:
        deadline = time.monotonic() + 5.0  # and a while after the last flap
        for _ in range(500):
            if time.monotonic() >= deadline:
                break
            assert cloud.client.registration_attempts("dev-flap") <= BUDGET
            time.sleep(0.01)
    finally:
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-flap") <= BUDGET


def test_after_flapping_the_device_comes_back_by_itself(cloud: Cloud, tmp_path: Path) -> None:
    agent = flapping_agent(cloud, tmp_path, "dev-flapback")
    try:
        since = cloud.client.last_sequence_number()
        cloud.client.wait_for_telemetry(
            since=since, device_id="dev-flapback", timeout_s=COME_BACK_S
        )
    finally:
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-flapback") <= BUDGET
