"""Warm boot: the daemon skips the keystore child when the identity files are unchanged.

The real daemon against devcloud, twice over the same state directory. Whether the
child ran is counted structurally: ``agent.runtime.daemon.start_in_child`` is wrapped by a
counter that still calls the real child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import agent.runtime.daemon
from agent.config import AgentConfig
from agent.core.clock import SystemClock
from agent.core.lifecycle import State
from agent.store.files import IDENTITY_CACHE_FILE
from tests.support.agentcloud import AgentThread, Cloud, issue_device, write_config

pytestmark = pytest.mark.integration
DEVICE_AGENT = [sys.executable, "-m", "agent"]


@pytest.fixture
def child_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every keystore child the daemon runs (the real one still runs)."""
    calls: list[str] = []
    real: Callable[..., Any] = agent.runtime.daemon.start_in_child

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(kwargs.get("now")))
        return real(*args, **kwargs)

    monkeypatch.setattr(agent.runtime.daemon, "start_in_child", counted)
    return calls


class ShiftedClock(SystemClock):
    """The real clocks, with the wall clock moved by ``offset_s``."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def time(self) -> float:
        return super().time() + self.offset_s


def boot_and_stop(config: AgentConfig, **options: Any) -> None:
    with AgentThread(config, **options) as running:
        running.wait_state(State.CONNECTED)
        assert running.stop() == 0


def test_second_start_with_unchanged_files_skips_the_child(
    cloud: Cloud, tmp_path: Path, child_calls: list[str]
) -> None:
    device = issue_device(cloud, "dev-warm")
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    boot_and_stop(config)
    assert len(child_calls) == 1
    assert (state_dir / IDENTITY_CACHE_FILE).exists()
    boot_and_stop(config)
    assert len(child_calls) == 1  # the warm boot ran no child
    # Same identity, same cached assignment: no second registration.
    assert cloud.client.registration_attempts("dev-warm") == 1
    # `status` and `check` are not confused by the extra file.
    status = subprocess.run(
        [*DEVICE_AGENT, "--config", str(tmp_path / "agent.toml"), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert status.returncode == 3, status.stderr  # not running: the documented exit
    shown = json.loads(status.stdout)
    assert shown["errors"] == []
    assert shown["assignment"]["deviceId"] == "dev-warm"
    check = subprocess.run(
        [*DEVICE_AGENT, "--config", str(tmp_path / "agent.toml"), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # image-prep leaves no identity data behind.
    prep = subprocess.run(
        [*DEVICE_AGENT, "--config", str(tmp_path / "agent.toml"), "image-prep"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert prep.returncode == 0, prep.stderr
    assert not (state_dir / IDENTITY_CACHE_FILE).exists()


def test_a_replaced_certificate_runs_the_child_and_discards_the_assignment(
    cloud: Cloud, tmp_path: Path, child_calls: list[str]
) -> None:
    device = issue_device(cloud, "dev-rotated")
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    boot_and_stop(config)
    renewed = issue_device(cloud, "dev-rotated", file_stem="dev-rotated-renewed")
    device.chain_path.write_bytes(renewed.chain_path.read_bytes())
    device.key_path.write_bytes(renewed.key_path.read_bytes())
    with AgentThread(config) as running:
        running.wait_state(State.CONNECTED)
        assert running.daemon.identity is not None
        assert running.daemon.identity.thumbprint != ""
        assert running.stop() == 0
    assert len(child_calls) == 2
    # The old assignment was bound to the old thumbprint: registered again.
    assert cloud.client.registration_attempts("dev-rotated") == 2
    cache = json.loads((state_dir / IDENTITY_CACHE_FILE).read_text())
    assert cache["identity"]["thumbprint"] == running.daemon.identity.thumbprint


def test_a_key_made_readable_by_others_is_refused_with_a_cache(
    cloud: Cloud, tmp_path: Path, child_calls: list[str]
) -> None:
    device = issue_device(cloud, "dev-chmod")
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    boot_and_stop(config)
    assert (state_dir / IDENTITY_CACHE_FILE).exists()
    device.key_path.chmod(0o644)
    result = subprocess.run(
        [*DEVICE_AGENT, "--config", str(tmp_path / "agent.toml"), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    assert result.returncode == 78, result.stderr
    assert str(device.key_path) in result.stderr
    assert "running the keystore check child" in result.stderr


def test_an_expired_cached_window_runs_the_child_and_waits(
    cloud: Cloud, tmp_path: Path, child_calls: list[str]
) -> None:
    not_after = datetime.now(UTC) + timedelta(days=60)
    device = issue_device(cloud, "dev-expiring", not_after=not_after)
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    boot_and_stop(config)
    assert len(child_calls) == 1
    later = (not_after - datetime.now(UTC)).total_seconds() + 3600
    with AgentThread(config, clock=ShiftedClock(later)) as running:
        running.wait_state(State.IDENTITY_WAIT)
        machine = running.daemon.machine
        assert machine is not None
        assert "expired" in str(machine.identity_problem)
        assert running.stop() == 0
    assert len(child_calls) >= 2


def test_a_corrupt_cache_is_ignored_and_rewritten(
    cloud: Cloud, tmp_path: Path, child_calls: list[str]
) -> None:
    device = issue_device(cloud, "dev-corrupt-cache")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / IDENTITY_CACHE_FILE).write_bytes(b'{"schema": 1, "identity": [')
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    boot_and_stop(config)
    assert len(child_calls) == 1
    cache = json.loads((state_dir / IDENTITY_CACHE_FILE).read_text())
    assert cache["identity"]["registration_id"] == "dev-corrupt-cache"
    boot_and_stop(config)
    assert len(child_calls) == 1
