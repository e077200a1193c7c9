"""`device-agent run` as a real process: SIGTERM, exit codes, threads, `status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agentcloud import Cloud, issue_device, wait_until, write_config

pytestmark = pytest.mark.integration
DEVICE_AGENT = [sys.executable, "-m", "agent"]


@pytest.fixture
def process_config(cloud: Cloud, tmp_path: Path) -> Path:
    device = issue_device(cloud, "dev-process")
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    return tmp_path / "agent.toml"


@pytest.fixture
def agent_process(process_config: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [*DEVICE_AGENT, "--config", str(process_config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def live_status(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "state" / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_sigterm_stops_cleanly_with_exit_0_and_few_threads(
    cloud: Cloud, agent_process: subprocess.Popen[bytes], tmp_path: Path, process_config: Path
) -> None:
    wait_until(
        lambda: live_status(tmp_path).get("state") == "CONNECTED",
        timeout_s=20,
        what="status.json CONNECTED",
    )
    cloud.client.wait_for_telemetry(device_id="dev-process", count=2, timeout_s=10)
    threads = len(os.listdir(f"/proc/{agent_process.pid}/task"))
    assert threads <= 3
    status = subprocess.run(
        [*DEVICE_AGENT, "--config", str(process_config), "status", "--json"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["running"] is True
    assert shown["live"]["state"] == "CONNECTED"
    assert shown["assignment"]["deviceId"] == "dev-process"

    agent_process.send_signal(signal.SIGTERM)
    assert agent_process.wait(15) == 0
    assert live_status(tmp_path)["state"] == "STOPPED"
    device = cloud.client.get_device("dev-process")
    assert device["connectionState"] == "Disconnected"
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log


def test_config_error_exits_78_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[identity]
cert_chain_path = "/nonexistent/chain.pem"
key_path = "/nonexistent/key.pem"

[dps]
id_scope = "0ne00000DEV"

[telemetry]
interval_s = "often"

[hal]
backend = "mock"
"""
    )
    result = subprocess.run(
        [*DEVICE_AGENT, "--config", str(bad), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78
    assert "interval_s" in result.stderr
    assert str(bad) in result.stderr


def test_unusable_identity_exits_78(tmp_path: Path, cloud: Cloud) -> None:
    device = issue_device(cloud, "dev-openkey")
    device.key_path.chmod(0o644)  # readable by others: refused, naming the file
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state")
    result = subprocess.run(
        [*DEVICE_AGENT, "--config", str(tmp_path / "agent.toml"), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert str(device.key_path) in result.stderr
