"""How often a connected agent wakes up: a structural count, not a timing.

Each sampling round needs three wakeups of the loop -- start the conversions, collect
every sensor at once when the slowest is ready, take the PUBACK -- and nothing else may
add its own: the status.json refresh rides on them, the buffer commit timer does not run
while every message is acknowledged before the next commit, and a connection that
publishes more often than its keep-alive sends no PINGREQ. (The 10-minute measurement at
a 60 s interval is ``bench/run.py --only idle``; this is the same structure, faster.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.core.lifecycle import State
from devcloud.app import DevCloud
from tests.support.agentcloud import AgentThread, Cloud, issue_device, wait_until, write_config

pytestmark = pytest.mark.integration

INTERVAL_S = 0.5
ROUNDS = 10


def test_a_connected_agent_wakes_three_times_per_sampling_round(
    cloud: Cloud, tmp_path: Path
) -> None:
    device = issue_device(cloud, "dev-quiet")
    path = tmp_path / "agent.toml"
    write_config(
        path,
        cloud,
        device,
        state_dir=tmp_path / "state",
        interval_s=INTERVAL_S,
        buffer="sqlite",
        telemetry_extra="buffer_commit_interval_s = 1.0",
    )
    # A keep-alive shorter than the window below, so that pings would show.
    path.write_text(path.read_text().replace("keep_alive_s = 30", "keep_alive_s = 1"))
    config = load_config(path)
    with AgentThread(config, status_refresh_s=1.0) as agent:
        agent.wait_state(State.CONNECTED)
        daemon = agent.daemon
        publisher = daemon.publisher
        # Past connect-time traffic (twin GET, reported properties).
        wait_until(lambda: publisher.acked_total >= 3, what="the first messages acknowledged")
        assert daemon.store is not None
        writes: list[object] = []
        write = daemon.store.write_status

        def counting(status: object) -> None:
            writes.append(status)
            write(status)  # type: ignore[arg-type]

        daemon.store.write_status = counting  # type: ignore[method-assign]
        acked, woke = publisher.acked_total, daemon.loop.stats.wakeups
        wait_until(
            lambda: publisher.acked_total >= acked + ROUNDS,
            timeout_s=ROUNDS * INTERVAL_S * 4 + 10,
            what=f"{ROUNDS} more messages acknowledged",
        )
        rounds = publisher.acked_total - acked
        wakeups = daemon.loop.stats.wakeups - woke
        assert daemon.state is State.CONNECTED
        transport = daemon.actions.transport
        assert transport is not None and transport.connected
        assignment = daemon.machine.assignment if daemon.machine else None
        assert assignment is not None
        hub = cloud.hub_of(assignment.assigned_hub)

        def pings_received(app: DevCloud) -> int:
            connection = app.hub_servers[hub].connection(assignment.device_id)
            assert connection is not None, "the agent is not connected to its hub"
            return connection.ping_requests

        pings = cloud.handle.call(pings_received)
    assert writes, "status.json was refreshed"  # every 1 s, on wakeups the loop had anyway
    assert pings == 0
    # Three per round; one more for the round in progress at each end of the window.
    assert wakeups <= 3 * rounds + 2, (wakeups, rounds)
