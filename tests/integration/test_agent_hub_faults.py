"""The hub misbehaves in ways that are not rejections: CONNACK 3, a twin GET never answered.

Faults are injected into the running devcloud's hub endpoints (on devcloud's own loop),
so the agent still speaks real MQTT over real TLS to a real server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.core.lifecycle import State
from agent.core.session import TWIN_GET_ATTEMPTS
from tests.support.agentcloud import AgentThread, Cloud, issue_device, wait_until, write_config

pytestmark = pytest.mark.integration
TWIN_GET = "$iothub/twin/GET/"


def wrap_hubs(cloud: Cloud, wrapper: Callable[[Any], Any]) -> None:
    """Replace every hub endpoint's ``authenticate`` with ``wrapper(original)``."""

    def install(app: Any) -> None:
        for hub in app.hubs.values():
            hub.authenticate = wrapper(hub.authenticate)

    cloud.handle.call(install)


def test_connack_3_retries_the_same_hub_with_backoff_and_never_asks_dps(
    cloud: Cloud, tmp_path: Path
) -> None:
    refusals: list[str] = []
    lock = threading.Lock()

    def unavailable_three_times(original: Any) -> Any:
        def authenticate(request: Any, connection: Any) -> Any:
            with lock:
                if len(refusals) < 3:
                    refusals.append(request.username)
                    return 3, None  # server unavailable
            return original(request, connection)

        return authenticate

    device = issue_device(cloud, "dev-busyhub")
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        lifecycle={"backoff_base_s": 0.2, "backoff_cap_s": 0.5},
    )
    wrap_hubs(cloud, unavailable_three_times)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        machine = agent.daemon.machine
        assert machine is not None
        assert len(refusals) == 3
        assert len(set(refusals)) == 1  # the same hub every time
        assert machine.hub_backoff.attempt == 3  # each refusal waited a backoff delay
        cloud.client.wait_for_telemetry(device_id="dev-busyhub", timeout_s=10)
        assert cloud.client.registration_attempts("dev-busyhub") == 1  # the first boot only
        assert agent.stop() == 0


def test_unanswered_twin_get_is_retried_then_reported_properties_are_sent(
    cloud: Cloud, tmp_path: Path
) -> None:
    gets: list[str] = []

    def mute_twin_get(original: Any) -> Any:
        def authenticate(request: Any, connection: Any) -> tuple[int, Any]:
            code, session = original(request, connection)
            if session is not None:
                inner = session.on_publish

                def on_publish(topic: str, payload: bytes, qos: int) -> None:
                    if topic.startswith(TWIN_GET):
                        gets.append(topic)  # swallowed: never answered
                        return
                    inner(topic, payload, qos)

                session.on_publish = on_publish
            return code, session

        return authenticate

    device = issue_device(cloud, "dev-mutetwin")
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        lifecycle={"connect_timeout_s": 0.5},
    )
    wrap_hubs(cloud, mute_twin_get)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        # Telemetry is not held up by the missing twin.
        cloud.client.wait_for_telemetry(device_id="dev-mutetwin", count=2, timeout_s=10)
        reported = wait_until(
            lambda: cloud.client.get_twin("dev-mutetwin")["properties"]["reported"].get(
                "agentVersion"
            ),
            timeout_s=10,
            what="reported properties without a twin GET answer",
        )
        assert reported
        assert len(gets) == TWIN_GET_ATTEMPTS
        assert len(set(gets)) == TWIN_GET_ATTEMPTS  # a new request id each time
        assert agent.state is State.CONNECTED  # the same connection carried on
        assert agent.stop() == 0


def test_status_file_refreshes_telemetry_counters_between_lifecycle_changes(
    cloud: Cloud, tmp_path: Path
) -> None:
    device = issue_device(cloud, "dev-freshstatus")
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "agent.toml", cloud, device, state_dir=state_dir, interval_s=0.05
    )

    def read() -> dict[str, Any]:
        try:
            return dict(json.loads((state_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    with AgentThread(config, status_refresh_s=0.5) as agent:
        agent.wait_state(State.CONNECTED)
        store = agent.daemon.store
        assert store is not None
        writes: list[float] = []
        write = store.write_status

        def counting(status: Any) -> None:
            writes.append(agent.daemon.clock.monotonic())
            write(status)

        store.write_status = counting  # type: ignore[method-assign]
        first = wait_until(lambda: read().get("state") == "CONNECTED" and read(), what="status")
        acked = first["lastTelemetry"]["ackedTotal"]
        later = wait_until(
            lambda: read()["lastTelemetry"]["ackedTotal"] > acked + 5 and read(),
            timeout_s=5,
            what="status.json counters refreshed while CONNECTED",
        )
        assert later["state"] == "CONNECTED"
        sent_before = agent.daemon.publisher.acked_total
        wait_until(lambda: agent.daemon.publisher.acked_total >= sent_before + 20, what="traffic")
        # Many messages, few writes: at most one per refresh period (plus one in flight).
        span = agent.daemon.clock.monotonic() - writes[0]
        assert 1 <= len(writes) <= span / 0.5 + 2
        assert agent.stop() == 0
