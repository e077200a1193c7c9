"""The network misbehaves between the real agent and devcloud (fault proxies on loopback).

The agent runs in a thread of the test process (:class:`AgentThread`, the real daemon
with its real sockets); devcloud sits behind :class:`~tests.support.faultproxy.FaultProxy`
instances. Timings are scaled down through the agent's config (backoff, long outage,
keep-alive), as a device would see them scaled up.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from agent.core.lifecycle import State
from devcloud.errors import ThrottledError
from tests.faults.conftest import Proxied
from tests.support.agentcloud import AgentThread
from tests.support.waiting import wait_until

FAST = {"backoff_base_s": 0.1, "backoff_cap_s": 0.5, "connect_timeout_s": 1.0}


def connected_with_telemetry(proxied: Proxied, agent: AgentThread, device_id: str) -> int:
    """Wait for CONNECTED and a fresh message; the devcloud sequence number after it."""
    agent.wait_state(State.CONNECTED, timeout_s=20)
    since = proxied.cloud.client.last_sequence_number()
    got = proxied.cloud.client.wait_for_telemetry(
        since=since, device_id=device_id, count=1, timeout_s=10
    )
    return got[-1].sequence_number


def stalled(proxied: Proxied, since: float) -> list[float]:
    """Connection attempts to any hub since ``since`` (monotonic), in order."""
    return sorted(t for proxy in proxied.hubs.values() for t in proxy.attempts_since(since))


def test_hub_down_longer_than_the_long_outage_then_back_the_agent_comes_back(
    proxied: Proxied,
) -> None:
    long_outage_s = 2.0
    config = proxied.config(
        "dev-hubdown",
        lifecycle={**FAST, "long_outage_s": long_outage_s, "dps_backoff_cap_s": 1.0},
    )
    with AgentThread(config) as agent:
        connected_with_telemetry(proxied, agent, "dev-hubdown")
        registrations = proxied.cloud.client.registration_attempts("dev-hubdown")
        outage_s = 7.0  # > 3 x long_outage_s: the agent goes back to DPS meanwhile
        proxied.all_hubs("refuse")
        proxied.all_hubs("reset")  # drop the open connection too
        down_at = time.monotonic()
        wait_until(lambda: agent.state is not State.CONNECTED, timeout_s=5, what="drop noticed")
        states: set[State] = set()
        wait_until(
            lambda: states.add(agent.state) or time.monotonic() - down_at >= outage_s,
            timeout_s=outage_s + 2,
            interval_s=0.05,
            what="the outage",
        )
        assert State.CONNECTED not in states
        during = proxied.cloud.client.registration_attempts("dev-hubdown") - registrations
        # The long outage sends it to DPS (which assigns the same, still-down hub), but
        # not in a storm: at most one registration per long_outage_s.
        assert 1 <= during <= outage_s / long_outage_s + 1
        proxied.all_hubs("forward")
        back = connected_with_telemetry(proxied, agent, "dev-hubdown")
        assert back > 0
        assert time.monotonic() - down_at < outage_s + 15
        assert agent.stop() == 0


def test_a_stalled_tls_handshake_times_out_and_is_retried_until_the_hub_answers(
    proxied: Proxied,
) -> None:
    config = proxied.config("dev-stall", lifecycle=FAST)
    with AgentThread(config) as agent:
        connected_with_telemetry(proxied, agent, "dev-stall")
        proxied.all_hubs("reset")  # drop the open connection...
        proxied.all_hubs("blackhole")  # ...and let every new one stall in its handshake
        stalled_at = time.monotonic()
        wait_until(
            lambda: len(stalled(proxied, stalled_at)) >= 3,
            timeout_s=10,
            what="three stalled handshakes, each given up after connect_timeout_s",
        )
        assert agent.state is not State.CONNECTED
        attempts = stalled(proxied, stalled_at)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        timeout_s = FAST["connect_timeout_s"]
        assert all(gap >= timeout_s * 0.9 for gap in gaps), gaps  # each stall waited it out
        proxied.all_hubs("forward")
        connected_with_telemetry(proxied, agent, "dev-stall")
        assert agent.stop() == 0


def test_a_half_open_connection_is_detected_within_one_and_a_half_keep_alives(
    proxied: Proxied,
) -> None:
    keep_alive_s = 2
    config = proxied.config("dev-halfopen", lifecycle=FAST, keep_alive_s=keep_alive_s)
    with AgentThread(config) as agent:
        connected_with_telemetry(proxied, agent, "dev-halfopen")
        proxied.all_hubs("half_open")
        silenced_at = time.monotonic()
        wait_until(
            lambda: agent.state is not State.CONNECTED,
            timeout_s=4 * keep_alive_s,
            interval_s=0.01,
            what="the dead connection noticed",
        )
        noticed_s = time.monotonic() - silenced_at
        assert noticed_s <= 1.5 * keep_alive_s, noticed_s
        proxied.all_hubs("forward")
        connected_with_telemetry(proxied, agent, "dev-halfopen")
        assert agent.stop() == 0


def test_dps_answering_429_for_long_is_retried_after_retry_after_never_sooner(
    proxied: Proxied,
) -> None:
    retry_after_s = 2
    throttle_s = 6.0
    attempts: list[float] = []
    lock = threading.Lock()

    def throttle(app: Any) -> None:
        provisioner = app.provisioner
        original = provisioner.begin
        started = time.monotonic()

        def begin(registration_id: str, body: bytes, chain: Any) -> Any:
            with lock:
                attempts.append(time.monotonic())
            if time.monotonic() - started < throttle_s:
                raise ThrottledError("throttled by the test", retry_after_s=retry_after_s)
            return original(registration_id, body, chain)

        provisioner.begin = begin

    proxied.cloud.handle.call(throttle)
    config = proxied.config("dev-429", lifecycle={**FAST, "dps_backoff_cap_s": 1.0})
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=throttle_s + 20)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert len(attempts) >= 3, attempts
        assert all(gap >= retry_after_s * 0.95 for gap in gaps), gaps  # retry-after honoured
        assert len(attempts) <= throttle_s / retry_after_s + 2  # and no storm
        proxied.cloud.client.wait_for_telemetry(device_id="dev-429", timeout_s=10)
        assert agent.stop() == 0


def test_dps_down_while_the_hub_rejects_backs_off_and_recovers(proxied: Proxied) -> None:
    config = proxied.config(
        "dev-dpsdown", lifecycle={**FAST, "dps_backoff_cap_s": 2.0, "rejected_retry_s": 1.0}
    )
    client = proxied.cloud.client
    with AgentThread(config) as agent:
        connected_with_telemetry(proxied, agent, "dev-dpsdown")
        proxied.dps.reset()  # DPS accepts TCP and resets: every attempt is counted
        down_at = time.monotonic()
        client.disable_device("dev-dpsdown")
        wait_until(lambda: agent.state is not State.CONNECTED, timeout_s=10, what="rejection")
        window_s = 5.0
        wait_until(
            lambda: time.monotonic() - down_at >= window_s,
            timeout_s=window_s + 1,
            what="the DPS outage",
        )
        dps_tries = len(proxied.dps.attempts_since(down_at))
        # Capped backoff (cap 2 s, full jitter): a handful of tries, not a storm.
        assert 1 <= dps_tries <= 2 * window_s / 0.5, dps_tries
        assert agent.state in (
            State.DPS_BACKOFF,
            State.PROVISIONING,
            State.HUB_BACKOFF,
            State.CONNECTING,
            State.REPROVISION_WAIT,
        ), agent.state
        client.enable_device("dev-dpsdown")
        proxied.dps.forward()
        connected_with_telemetry(proxied, agent, "dev-dpsdown")
        assert agent.stop() == 0
