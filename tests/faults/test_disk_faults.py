"""A full state disk: a tiny tmpfs the test mounts (as root) over the state directory,
filled to the last byte, so every write of the agent fails with ENOSPC for real.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.core.lifecycle import State
from tests.support.agentcloud import AgentThread, Cloud, issue_device, write_config
from tests.support.waiting import wait_until

#: How many restarts the budget must survive on a full disk (issue #9 item 2).
RESTARTS = 10
BUDGET = 3


def fill(directory: Path) -> None:
    """Write until the filesystem says ENOSPC (bounded: a 64 KiB tmpfs)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(10_000):
            try:
                os.write(fd, b"\0" * 512)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return
    finally:
        os.close(fd)
    raise AssertionError("the tmpfs never filled up")


@pytest.fixture
def full_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory on a full 64 KiB tmpfs; unmounted afterwards."""
    mountpoint = tmp_path / "state"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint)],
        check=True,
        timeout=30,
    )
    try:
        yield mountpoint
    finally:
        result = subprocess.run(["umount", str(mountpoint)], check=False, timeout=30)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=30)


def config_for(
    cloud: Cloud, tmp_path: Path, state_dir: Path, name: str, *, buffer: str = "memory"
) -> AgentConfig:
    device = issue_device(cloud, name)
    return write_config(
        tmp_path / f"{name}.toml",
        cloud,
        device,
        state_dir=state_dir,
        lifecycle={"reprovision_budget": BUDGET},
        buffer=buffer,
    )


@pytest.mark.parametrize("buffer", ["memory", "sqlite"])
def test_a_full_state_disk_is_reported_and_telemetry_still_flows(
    cloud: Cloud,
    tmp_path: Path,
    full_state_dir: Path,
    caplog: pytest.LogCaptureFixture,
    buffer: str,
) -> None:
    caplog.set_level(logging.WARNING)
    fill(full_state_dir)
    config = config_for(cloud, tmp_path, full_state_dir, "dev-fulldisk", buffer=buffer)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=20)
        cloud.client.wait_for_telemetry(device_id="dev-fulldisk", count=3, timeout_s=10)
        assert agent.stop() == 0
    assert "No space left on device" in caplog.text or "ENOSPC" in caplog.text, caplog.text
    if buffer == "sqlite":  # sampling went on; the durable buffer says so once it must write,
        # and one that never had to (every message acknowledged before a commit) opened no
        # database on the full disk at all
        buffered = (full_state_dir / "telemetry.db").exists()
        assert "telemetry buffer" in caplog.text or not buffered, caplog.text
    leftovers = [p.name for p in full_state_dir.iterdir() if p.name != "filler"]
    assert all(not name.startswith(".") for name in leftovers), leftovers  # no temp files


def test_the_budget_holds_over_restarts_on_a_full_state_disk(
    cloud: Cloud, tmp_path: Path, full_state_dir: Path
) -> None:
    config = config_for(cloud, tmp_path, full_state_dir, "dev-fullbudget")
    # The first boot may write its state; then the disk fills, as in the field.
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=20)
        assert agent.stop() == 0
    with contextlib.suppress(OSError):
        (full_state_dir / "state.json").unlink()  # lost: each boot must ask DPS again...
    fill(full_state_dir)
    for _ in range(RESTARTS):
        with AgentThread(config) as agent:
            # Connected, or told by the budget to wait: either way this boot is done.
            wait_until(
                lambda: agent.state in (State.CONNECTED, State.REPROVISION_WAIT),
                timeout_s=15,
                what="connected or waiting for the budget",
            )
            assert agent.stop() == 0
    registrations = cloud.client.registration_attempts("dev-fullbudget")
    assert registrations <= BUDGET, registrations
