"""A certificate that cannot be used now does not kill the daemon: it waits, says why, recovers.

Real certificates from devcloud's PKI (not yet valid, expired, a key that does not match);
the fix is to replace the files the config names, as a rotation or NTP would, and the
same daemon (no restart) provisions and sends telemetry -- including what it sampled
while it waited.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import hal
from agent.core.lifecycle import State
from devcloud.pki import Issued
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration


def replace_identity(target: Issued, good: Issued) -> None:
    """Write ``good``'s chain and key over ``target``'s files, certificate first."""
    target.chain_path.write_bytes(good.chain_path.read_bytes())
    target.key_path.write_bytes(good.key_path.read_bytes())  # keeps its mode 0600


def live_status(state_dir: Path) -> dict[str, object]:
    path = state_dir / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def assert_waits_then_recovers(
    cloud: Cloud, tmp_path: Path, device: Issued, registration_id: str, expected: str
) -> None:
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    with AgentThread(config) as agent:
        agent.wait_state(State.IDENTITY_WAIT)
        # Running, not exited; the status file says what is wrong and the fix.
        status = wait_until(
            lambda: (
                live_status(state_dir).get("state") == "IDENTITY_WAIT" and live_status(state_dir)
            ),
            what="status.json in IDENTITY_WAIT",
        )
        assert expected in str(status["description"])
        assert expected in str(status["errors"]["identity"])  # type: ignore[index]
        assert agent.exit_code is None
        # Sensors are sampled and queued while it waits; nothing reaches DPS.
        wait_until(lambda: agent.daemon.sequence >= 3, what="samples taken while waiting")
        assert len(agent.daemon.queue) >= 3
        machine = agent.daemon.machine
        assert machine is not None
        wait_until(lambda: machine.identity_backoff.attempt >= 2, what="keystore re-checks")
        assert agent.state is State.IDENTITY_WAIT
        assert cloud.client.registration_attempts(registration_id) == 0
        # The files are replaced with a usable pair: the same daemon provisions.
        good = issue_device(cloud, registration_id, file_stem=f"{registration_id}-good")
        replace_identity(device, good)
        agent.wait_state(State.CONNECTED)
        messages = cloud.client.wait_for_telemetry(device_id=registration_id, count=4, timeout_s=10)
        # What was sampled while waiting is delivered too, starting with the first.
        assert messages[0].json()["sequence"] == 1
        assert cloud.client.registration_attempts(registration_id) == 1
        assert agent.stop() == 0
    assert live_status(state_dir)["state"] == "STOPPED"


def test_not_yet_valid_certificate_waits_for_the_clock(cloud: Cloud, tmp_path: Path) -> None:
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    device = issue_device(cloud, "dev-early", not_before=tomorrow)
    assert_waits_then_recovers(cloud, tmp_path, device, "dev-early", "not valid before")


def test_expired_certificate_waits_for_a_renewed_one(cloud: Cloud, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    device = issue_device(
        cloud, "dev-expired", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    assert_waits_then_recovers(cloud, tmp_path, device, "dev-expired", "expired")


def test_rotation_with_the_new_certificate_before_the_new_key(cloud: Cloud, tmp_path: Path) -> None:
    device = issue_device(cloud, "dev-rotating")
    other = issue_device(cloud, "dev-rotating", file_stem="dev-rotating-next")
    device.chain_path.write_bytes(other.chain_path.read_bytes())  # the key is still the old one
    assert_waits_then_recovers(cloud, tmp_path, device, "dev-rotating", "does not belong")


def test_certificate_expiring_while_running_waits_instead_of_storming_dps(
    cloud: Cloud, tmp_path: Path
) -> None:
    lifetime_s = 6
    expires = datetime.now(UTC) + timedelta(seconds=lifetime_s)
    device = issue_device(cloud, "dev-expiring", not_after=expires)
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        wait_until(
            lambda: datetime.now(UTC) > device.cert.not_valid_after_utc,
            timeout_s=lifetime_s + 5,
            what="the certificate to expire",
        )
        # The hub drops the device (disabled); every reconnect now fails: with the old
        # behaviour hub -> DPS -> hub ... each a TLS failure. The agent must wait instead.
        cloud.client.disable_device("dev-expiring")
        agent.wait_state(State.IDENTITY_WAIT)
        assert "expired" in str(agent.daemon.status()["description"])
        machine = agent.daemon.machine
        assert machine is not None
        wait_until(lambda: machine.identity_backoff.attempt >= 3, what="keystore re-checks")
        assert agent.state is State.IDENTITY_WAIT
        assert cloud.client.registration_attempts("dev-expiring") == 1
        # Renewed certificate (new thumbprint): the cached assignment is discarded, DPS again.
        cloud.client.enable_device("dev-expiring")
        since = cloud.client.last_sequence_number()
        good = issue_device(cloud, "dev-expiring", file_stem="dev-expiring-renewed")
        replace_identity(device, good)
        agent.wait_state(State.CONNECTED)
        cloud.client.wait_for_telemetry(since=since, device_id="dev-expiring", timeout_s=10)
        assert cloud.client.registration_attempts("dev-expiring") == 2
        store = agent.daemon.store
        assert store is not None and store.discard_reason is not None
        assert agent.stop() == 0
    saved = json.loads((state_dir / "state.json").read_text())
    assert saved["assignment"]["deviceId"] == "dev-expiring"


def test_device_agent_check_reports_the_certificate_problem(cloud: Cloud, tmp_path: Path) -> None:
    import subprocess
    import sys

    now = datetime.now(UTC)
    device = issue_device(
        cloud, "dev-check", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(tmp_path / "agent.toml"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "[FAIL] certificate" in result.stdout
    assert "expired" in result.stdout


def test_hub_connack_5_with_an_expired_certificate_waits_instead_of_going_to_dps(
    cloud: Cloud, tmp_path: Path
) -> None:
    """The brief's case: the hub refuses (CONNACK 5) once the certificate has expired.

    devcloud's TLS would refuse a really expired certificate before CONNACK, so here the
    agent's wall clock moves past ``not_after`` instead (as after a long uptime); the
    hub refuses because the device is disabled. Without the identity check the agent
    would go to DPS (which real Azure answers 401) and keep trying; it must wait.
    """
    import hal
    from tests.support.fakeclock import ShiftedClock

    device = issue_device(cloud, "dev-late")
    config = write_config(
        tmp_path / "agent.toml",
        cloud,
        device,
        state_dir=tmp_path / "state",
        hal_extra="led_pin = 17",
    )
    clock = ShiftedClock()
    with AgentThread(config, clock=clock) as agent:
        agent.wait_state(State.CONNECTED)
        past_expiry = device.cert.not_valid_after_utc + timedelta(days=1)
        clock.offset_s = past_expiry.timestamp() - datetime.now(UTC).timestamp()
        cloud.client.disable_device("dev-late")  # drops the connection; reconnects get CONNACK 5
        agent.wait_state(State.IDENTITY_WAIT)
        assert "expired" in str(agent.daemon.status()["errors"]["identity"])  # type: ignore[index]
        led = agent.daemon.hardware.led
        wait_until(lambda: led.pattern is hal.LedPattern.ERROR, what="LED error")
        machine = agent.daemon.machine
        assert machine is not None
        wait_until(lambda: machine.identity_backoff.attempt >= 3, what="keystore re-checks")
        assert agent.state is State.IDENTITY_WAIT
        assert cloud.client.registration_attempts("dev-late") == 1
        assert not machine.hub_rejected  # never taken as the hub's verdict on the device
        # The clock is right again and the device enabled: the same identity, the cached
        # hub, no DPS call.
        cloud.client.enable_device("dev-late")
        clock.offset_s = 0.0
        agent.wait_state(State.CONNECTED)
        assert cloud.client.registration_attempts("dev-late") == 1
        assert agent.stop() == 0


def test_no_identity_yet_waits_and_provisions_once_it_is_dropped_in(
    cloud: Cloud, tmp_path: Path
) -> None:
    # A clone of a golden image: config in place, no certificate or key yet.
    device = issue_device(cloud, "dev-firstboot")
    chain, key = device.chain_path.read_bytes(), device.key_path.read_bytes()
    device.chain_path.unlink()
    device.key_path.unlink()
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "agent.toml", cloud, device, state_dir=state_dir, hal_extra="led_pin = 17"
    )
    with AgentThread(config) as agent:
        agent.wait_state(State.IDENTITY_WAIT)
        status = wait_until(
            lambda: (
                live_status(state_dir).get("state") == "IDENTITY_WAIT" and live_status(state_dir)
            ),
            what="status.json in IDENTITY_WAIT",
        )
        led = agent.daemon.hardware.led
        assert led is not None
        wait_until(lambda: led.pattern is hal.LedPattern.WAITING, what="the WAITING LED")
        description = str(status["description"])
        assert description.startswith(f"waiting for identity in {device.chain_path.parent}/")
        assert str(config.identity.import_dir) in description
        assert description.endswith("provisioning as soon as it is there")
        assert agent.exit_code is None
        assert cloud.client.registration_attempts("dev-firstboot") == 0
        # Dropped in as an admin would: the key first (mode 0600), then the chain.
        fd = os.open(device.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        device.chain_path.write_bytes(chain)
        agent.wait_state(State.CONNECTED)
        wait_until(lambda: led.pattern is hal.LedPattern.CONNECTED, what="the LED steady on")
        cloud.client.wait_for_telemetry(device_id="dev-firstboot", count=1, timeout_s=10)
        assert cloud.client.registration_attempts("dev-firstboot") == 1
        assert agent.stop() == 0
