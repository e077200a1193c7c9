"""DPS unreachable at boot, DPS throttling, a replaced certificate: the agent copes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.core.lifecycle import State
from agent.store.files import STATE_FILE
from devcloud.dps import RateLimiter
from devcloud.pki import PKI
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    free_port,
    fresh_addresses,
    issue_device,
    running_cloud,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration


def test_dps_unreachable_at_boot_retries_without_crashing(tmp_path: Path) -> None:
    addresses = fresh_addresses()
    port = free_port(addresses[1])
    pki = PKI.create(tmp_path / "devcloud" / "pki")
    device = pki.issue_device("dev-offline")
    config = write_config(
        tmp_path / "agent.toml",
        None,
        device,
        state_dir=tmp_path / "state",
        dps_host=addresses[1],
        dps_port=port,
        hub_port=port,
        id_scope="0ne00000DEV",
        ca_path=pki.root_path,
        allowed_hubs=[addresses[2], addresses[3]],  # the hubs of the devcloud started below
    )
    with AgentThread(config) as agent:
        # Nothing listens yet: the agent keeps retrying DPS with backoff, and stays up.
        machine = wait_until(lambda: agent.daemon.machine, what="lifecycle")
        wait_until(lambda: machine.dps_backoff.attempt >= 3, what="three failed DPS attempts")
        assert agent.state in (State.PROVISIONING, State.DPS_BACKOFF)
        assert "DPS" in str(agent.daemon.status()["description"])
        # DPS comes up: the next retry provisions and telemetry flows.
        with running_cloud(tmp_path, addresses=addresses, port=port) as cloud:
            agent.wait_state(State.CONNECTED)
            cloud.client.wait_for_telemetry(device_id="dev-offline", timeout_s=10)
            assert cloud.client.registration_attempts("dev-offline") == 1
            assert agent.stop() == 0


def test_dps_429_is_honoured(cloud: Cloud, tmp_path: Path) -> None:
    device = issue_device(cloud, "dev-throttled")
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")

    def drain_tokens(app: object) -> None:
        # One registration every 3 s, and the one token is taken now.
        limiter = RateLimiter(1 / 3)
        assert limiter.acquire() is None
        app.provisioner.limiter = limiter  # type: ignore[attr-defined]

    cloud.handle.call(drain_tokens)
    with AgentThread(config) as agent:
        first = wait_until(
            lambda: cloud.client.registration_attempts("dev-throttled") >= 1 and time.monotonic(),
            what="first register request",
        )
        second = wait_until(
            lambda: cloud.client.registration_attempts("dev-throttled") >= 2 and time.monotonic(),
            timeout_s=10,
            what="second register request",
        )
        # DPS said retry-after >= 1 s; a backoff of 0.05 s would have come back at once.
        assert second - first >= 0.9
        agent.wait_state(State.CONNECTED)
        assert cloud.client.registration_attempts("dev-throttled") == 2
        assert agent.stop() == 0


def test_replaced_certificate_discards_the_cache_and_provisions_again(
    cloud: Cloud, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    old = issue_device(cloud, "dev-renewed")
    config = write_config(tmp_path / "agent.toml", cloud, old, state_dir=state_dir)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        assert agent.stop() == 0
    before = json.loads((state_dir / STATE_FILE).read_text())
    new = issue_device(cloud, "dev-renewed", file_stem="dev-renewed-2")
    assert new.thumbprint != old.thumbprint
    config = write_config(tmp_path / "agent2.toml", cloud, new, state_dir=state_dir)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        store = agent.daemon.store
        assert store is not None and store.discard_reason is not None
        assert "another identity" in store.discard_reason
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-renewed") == 2
    after = json.loads((state_dir / STATE_FILE).read_text())
    assert after["fingerprint"] != before["fingerprint"]


def test_long_outage_of_the_cached_hub_goes_back_to_dps(cloud: Cloud, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    device = issue_device(cloud, "dev-outage")
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=state_dir,
        lifecycle={"long_outage_s": 1.0},
    )
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        assert agent.stop() == 0
    # The cached hub is gone for good (nothing listens at its address any more).
    saved = json.loads((state_dir / STATE_FILE).read_text())
    dead_hub = fresh_addresses()[3]
    saved["assignment"]["assignedHub"] = dead_hub
    (state_dir / STATE_FILE).write_text(json.dumps(saved))
    hubs = [cloud.hub_host("hub1"), cloud.hub_host("hub2"), dead_hub]  # dead_hub is allowed
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=state_dir,
        lifecycle={"long_outage_s": 1.0},
        allowed_hubs=hubs,
    )
    with AgentThread(config) as agent:
        machine = wait_until(lambda: agent.daemon.machine, what="lifecycle")
        wait_until(lambda: machine.hub_backoff.attempt >= 2, what="failed hub connects")
        # Transient failures alone: the same hub again, until the outage is long.
        assert cloud.client.registration_attempts("dev-outage") == 1
        wait_until(
            lambda: agent.state is State.CONNECTED and agent.daemon.status()["hub"] != dead_hub,
            timeout_s=15,
            what="reprovisioned after the long outage",
        )
        reason = str(agent.daemon.status()["lastReprovisionReason"])
        assert "unreachable" in reason
        assert agent.stop() == 0
    assert cloud.client.registration_attempts("dev-outage") == 2


def test_corrupt_state_file_is_kept_aside_and_the_agent_provisions(
    cloud: Cloud, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / STATE_FILE).write_bytes(b'{"schema": 1, "fingerprint": tru')
    device = issue_device(cloud, "dev-corrupt")
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        assert agent.stop() == 0
    (copy,) = state_dir.glob(f"{STATE_FILE}.corrupt-*")
    assert copy.read_bytes() == b'{"schema": 1, "fingerprint": tru'
    assert (
        json.loads((state_dir / STATE_FILE).read_text())["assignment"]["deviceId"] == "dev-corrupt"
    )
    assert cloud.client.registration_attempts("dev-corrupt") == 1


def test_a_missing_sensor_is_reported_and_the_others_carry_on(cloud: Cloud, tmp_path: Path) -> None:
    device = issue_device(cloud, "dev-halfsensors")
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        # Nothing answers at 0x49 on the mock board.
        sensors=(
            '[{part = "SHT4x", bus = 1, address = 0x45},'
            ' {part = "TMP102", bus = 1, address = 0x49}]'
        ),
    )
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        (message,) = cloud.client.wait_for_telemetry(device_id="dev-halfsensors", timeout_s=10)
        body = message.json()
        assert set(body["readings"]) == {"sht4x@1:0x45"}
        assert "tmp102@1:0x49" in body["errors"]
        reported = wait_until(
            lambda: (
                cloud.client.get_twin("dev-halfsensors")["properties"]["reported"]
                .get("sensorErrors", {})
                .get("tmp102@1:0x49")
            ),
            what="the sensor error in reported properties",
        )
        assert reported
        assert agent.stop() == 0
