"""SIGKILL at random moments while the agent renews its certificate over and over:
every kill leaves a usable identity, and the next start connects.

``renew_at`` is made tiny, so a connected agent renews at once and again after each
renewal: most moments of its life are inside a renewal (key made, CSR sent, chain
written, hub switch, commit).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.identity.child import operational_config
from agent.identity.generations import current_paths
from agent.identity.keystore import open_keystore
from tests.support.agentcloud import Cloud, issue_device, running_cloud, wait_until, write_config

pytestmark = pytest.mark.integration
KILLS = 20


def status(config: AgentConfig) -> dict[str, object]:
    try:
        return dict(json.loads((config.state.directory / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def start(config: AgentConfig) -> subprocess.Popen[bytes]:
    log = open(config.source.parent / "agent.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config.source), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    log.close()
    return proc


def usable(config: AgentConfig) -> str:
    """The current operational pair loads and checks (key matches, chain, validity)."""
    identity = open_keystore(operational_config(config.identity), config_path=config.source)
    return identity.load(now=datetime.now(UTC)).thumbprint


def test_sigkill_during_renewal_always_leaves_a_usable_identity(tmp_path: Path) -> None:
    rng = random.Random(8)
    with running_cloud(tmp_path) as cloud:
        cloud.client.put_credential_policy("fleet", validity_days=30)
        cloud.client.put_enrollment_group("default", credential_policy="fleet")
        config = _config(tmp_path, cloud)
        proc = start(config)
        try:
            wait_until(lambda: status(config).get("state") == "CONNECTED", timeout_s=30, what="up")
        finally:
            proc.kill()
            proc.wait(10)
        seen = {usable(config)}
        in_flight = 0
        # Most kills at a random moment from start-up on (key, CSR, DPS, hub switch);
        # every fourth right after a renewal committed (the clean-up of the old pair).
        pointer = config.identity.operational_cert.with_name("operational.json")
        for index in range(KILLS):
            before = pointer.read_bytes() if pointer.exists() else b""
            proc = start(config)
            if index % 4 == 3:
                wait_until(
                    lambda before=before: pointer.exists() and pointer.read_bytes() != before,
                    timeout_s=60,
                    what="a renewal to commit",
                )
                time.sleep(rng.uniform(0.0, 0.3))  # the kill moment is the variable
            else:
                time.sleep(rng.uniform(0.5, 3.5))  # the kill moment is the variable
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            current = set(current_paths(config.identity))
            pending = [p for p in config.identity.operational_cert.parent.glob("operational-*")]
            in_flight += any(p not in current for p in pending)
            seen.add(usable(config))  # raises if the kill broke the identity
        assert in_flight >= 5, f"only {in_flight} kills landed inside a renewal"
        assert len(seen) >= 2, "no renewal completed between the kills"

        # The killed runs left their status.json behind: wait for this run's own.
        (config.state.directory / "status.json").unlink(missing_ok=True)
        since = cloud.client.last_sequence_number()
        proc = start(config)
        try:
            wait_until(lambda: status(config).get("state") == "CONNECTED", timeout_s=30, what="up")
            cloud.client.wait_for_telemetry(
                device_id="dev-kill", since=since, count=1, timeout_s=20
            )
            proc.terminate()
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _config(tmp_path: Path, cloud: Cloud) -> AgentConfig:
    onboarding = issue_device(cloud, "dev-kill")
    path = tmp_path / "agent.toml"
    write_config(
        path,
        cloud,
        onboarding,
        state_dir=tmp_path / "state",
        lifecycle={"reprovision_budget": 10_000},
    )
    text = path.read_text().replace(
        "[dps]",
        'issuance = "dps"\nrenew_at = 0.000001\nrenew_jitter = 0.0\nrenew_check_s = 0.05\n\n[dps]',
        1,
    )
    path.write_text(text)
    return load_config(path)
