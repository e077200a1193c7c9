"""Hypothesis through devcloud into one real, running agent: methods and desired patches.

One daemon (the real one, in a thread, over real TLS) takes every generated direct
method and desired-property patch, as a long-running device would; after each it must
still be connected and have answered; after all of them telemetry still flows,
``getStatus`` answers 200 and the interval in force is valid. Example counts are modest
(each is a round trip through devcloud); the cores get the volume in
``test_fuzz_core.py``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from agent.core import twin
from agent.core.lifecycle import State
from devcloud.errors import DevCloudError, DeviceNotOnlineError, InvalidRequestError
from tests.faults.test_fuzz_core import HUGE, SENSORS, desired_docs, json_values, method_names
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    wait_methods_online,
    write_config,
)
from tests.support.waiting import wait_until

DEVICE = "dev-fuzzed"
THROUGH_DEVCLOUD = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def sendable(value: object) -> bool:
    """Whether devcloud's REST API can carry ``value`` (strict JSON: no NaN, no inf)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


@pytest.fixture
def agent(cloud: Cloud, tmp_path: Path) -> Iterator[AgentThread]:
    device = issue_device(cloud, DEVICE)
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        interval_s=1.0,
    )
    with AgentThread(config) as running:
        running.wait_state(State.CONNECTED, timeout_s=20)
        wait_methods_online(cloud, DEVICE)
        yield running
        assert running.stop() == 0


def settle_reprovision(agent: AgentThread) -> None:
    """A reprovision takes effect after its reply has gone out (at most EFFECT_WAIT_S
    later): wait until it has, so that the agent is not caught leaving the hub later."""

    def taken() -> bool:
        session = agent.daemon.actions.session
        return session is None or not session.has_pending_effects

    wait_until(taken, timeout_s=10, what="the reprovision to take effect")


def still_well(cloud: Cloud, agent: AgentThread) -> None:
    """Connected (again, after a reprovision the fuzzing asked for), answering, sampling,
    with a valid interval in force."""
    answer: tuple[int, Any] | None = None
    for _ in range(2):
        agent.wait_state(State.CONNECTED, timeout_s=20)
        try:
            answer = cloud.client.invoke_method(DEVICE, "getStatus", None, timeout_s=10)
            break
        except DeviceNotOnlineError:
            wait_methods_online(cloud, DEVICE, timeout_s=20)
    assert answer is not None, "the device never came back online"
    status, payload = answer
    assert status == 200 and payload["state"] == "CONNECTED"
    seconds = agent.daemon.settings.telemetry_interval_s
    assert math.isfinite(seconds) and twin.MIN_INTERVAL_S <= seconds <= twin.MAX_INTERVAL_S


def test_direct_methods_from_devcloud_are_answered_and_never_crash_the_agent(
    cloud: Cloud, agent: AgentThread
) -> None:
    answers: list[int] = []

    @THROUGH_DEVCLOUD
    @given(
        name=method_names.filter(lambda n: n and "/" not in n and "?" not in n),
        payload=json_values | st.fixed_dictionaries({"seconds": json_values}),
    )
    def call(name: str, payload: Any) -> None:
        if not sendable(payload):
            reject()
        if name == "reprovision":
            payload = {"force": False} if not isinstance(payload, dict) else payload
        status: int | None = None
        for _ in range(2):  # a reprovision asked for earlier may still be reconnecting
            try:
                status, body = cloud.client.invoke_method(DEVICE, name, payload, timeout_s=10)
                break
            except InvalidRequestError:
                reject()  # devcloud itself refused the request (not the agent's answer)
            except DeviceNotOnlineError:
                agent.wait_state(State.CONNECTED, timeout_s=20)
                wait_methods_online(cloud, DEVICE, timeout_s=20)
        assert status is not None, "the device never came back online"
        answers.append(status)
        assert status < 500 or name not in ("getStatus", "setTelemetryInterval"), (name, body)
        assert agent.state in (State.CONNECTED, State.PROVISIONING, State.CONNECTING)
        if name == "reprovision":
            settle_reprovision(agent)
        if agent.state is not State.CONNECTED:  # a reprovision was asked for: let it finish
            agent.wait_state(State.CONNECTED, timeout_s=20)
            wait_methods_online(cloud, DEVICE)

    call()
    assert answers, "no method call reached the agent"
    still_well(cloud, agent)
    since = cloud.client.last_sequence_number()
    cloud.client.wait_for_telemetry(since=since, device_id=DEVICE, timeout_s=15)


def test_desired_patches_from_devcloud_never_wedge_the_agent(
    cloud: Cloud, agent: AgentThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    @THROUGH_DEVCLOUD
    @given(patch=desired_docs)
    def push(patch: dict[str, Any]) -> None:
        patch = {k: v for k, v in patch.items() if k and not k.startswith("$")}
        if not patch or not sendable(patch):
            reject()
        try:
            cloud.client.patch_twin_desired(DEVICE, patch)
        except DevCloudError:
            reject()  # devcloud refused it (too deep, bad key): nothing reached the agent
        assert agent.state is State.CONNECTED

    push()
    # A good value after all that garbage is still applied and acknowledged.
    cloud.client.patch_twin_desired(DEVICE, {"telemetryIntervalSeconds": 2})
    wait_until(
        lambda: agent.daemon.settings.telemetry_interval_s == 2.0,
        timeout_s=10,
        what="the good interval applied after the garbage",
    )
    still_well(cloud, agent)
    assert "Traceback" not in caplog.text


def test_a_huge_desired_interval_is_refused_and_the_rest_applied(
    cloud: Cloud, agent: AgentThread
) -> None:
    key = twin.twin_key(SENSORS[0])
    cloud.client.patch_twin_desired(
        DEVICE, {"telemetryIntervalSeconds": HUGE, "sensors": {key: {"enabled": False}}}
    )
    wait_until(
        lambda: SENSORS[0] in agent.daemon.settings.disabled_sensors,
        timeout_s=10,
        what="the good property next to the huge one applied",
    )
    reported = cloud.client.get_twin(DEVICE)["properties"]["reported"]
    assert reported["telemetryIntervalSeconds"]["ac"] == 400
    still_well(cloud, agent)
