"""Rejections with the real agent against devcloud: nothing stranded, DPS not stormed.

* The issue's episode with every lifecycle timing scaled by 1/10: a device disabled for
  15 s (150 s) is back within 30 s (5 min) of being enabled, with at most 3 DPS
  registrations in the whole episode.
* The budget holds across 10 restarts of the real process on a full state disk (a tmpfs
  of the test's own, filled up): at most ``reprovision_budget`` registrations.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.core.lifecycle import State
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    wait_methods_online,
    wait_until,
    write_config,
)
from tests.support.tmpfs import small_tmpfs_argv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
#: The lifecycle defaults (agent.config.LifecycleConfig) scaled by this.
SCALE = 0.1
SCALED = {
    "backoff_base_s": 1.0 * SCALE,
    "backoff_cap_s": 300.0 * SCALE,
    "long_outage_s": 1200.0 * SCALE,
    "dps_backoff_cap_s": 600.0 * SCALE,
    "rejected_retry_s": 300.0 * SCALE,
    "rejected_hub_retry_s": 120.0 * SCALE,
    "reprovision_budget": 6,
    "reprovision_window_s": 3600.0 * SCALE,
    "connect_timeout_s": 3.0,
}


def test_a_device_disabled_for_a_while_comes_back_by_itself_without_storming_dps(
    cloud: Cloud, tmp_path: Path
) -> None:
    device = issue_device(cloud, "dev-episode")
    config = write_config(
        tmp_path / "agent.toml", cloud, device, state_dir=tmp_path / "state", lifecycle=SCALED
    )
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        wait_methods_online(cloud, "dev-episode")
        machine = agent.daemon.machine
        assert machine is not None and machine.assignment is not None
        hub = cloud.hub_of(machine.assignment.assigned_hub)
        cloud.client.set_group_allocation("default", "hashed", [hub])  # DPS: the same hub
        before = cloud.client.registration_attempts("dev-episode")
        cloud.client.disable_device("dev-episode", hub=hub)  # drops the connection
        wait_until(lambda: machine.rejections >= 1, what="the hub refusing the device")
        # The episode is a duration, not an event: the device stays disabled 150 s / 10.
        time.sleep(150.0 * SCALE)
        assert agent.state is not State.REPROVISION_WAIT
        since = cloud.client.last_sequence_number()
        enabled_at = time.monotonic()
        cloud.client.enable_device("dev-episode", hub=hub)
        cloud.client.wait_for_telemetry(
            since=since, device_id="dev-episode", timeout_s=300.0 * SCALE
        )
        back_after = time.monotonic() - enabled_at
        registrations = cloud.client.registration_attempts("dev-episode") - before
        assert agent.stop() == 0
    assert registrations <= 3, registrations
    assert back_after <= 300.0 * SCALE


#: Runs inside the mount namespace with the small tmpfs: copies the state in, fills the
#: disk, then starts the real agent 10 times, each until the hub has refused it and it
#: backs off (registering with DPS first if its budget allows), then SIGTERM.
_RESTARTS = r"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
from tests.support.tmpfs import fill
config, seed, state, logs = (Path(arg) for arg in sys.argv[1:5])
for item in seed.iterdir():
    shutil.copy2(item, state / item.name)
fill(state)
runs = []
for run in range(10):
    log = logs / f"run-{run}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config), "run"],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "NOTIFY_SOCKET": ""})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if "HUB_BACKOFF: hub" in log.read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    text = log.read_text()
    runs.append({"exit": code, "backed_off": "HUB_BACKOFF: hub" in text,
                 "registered": "registering with DPS" in text,
                 "in_place": "budget updated in place" in text})
print(json.dumps(runs))
"""


def test_the_budget_holds_over_restarts_on_a_full_state_disk(cloud: Cloud, tmp_path: Path) -> None:
    device = issue_device(cloud, "dev-fulldisk")
    timing = {**SCALED, "rejected_retry_s": 600.0, "reprovision_window_s": 3600.0}
    seed = tmp_path / "seed-state"
    config = write_config(tmp_path / "agent.toml", cloud, device, state_dir=seed, lifecycle=timing)
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED)
        machine = agent.daemon.machine
        assert machine is not None and machine.assignment is not None
        hub = cloud.hub_of(machine.assignment.assigned_hub)
        assert agent.stop() == 0
    budget = config.lifecycle.reprovision_budget
    assert cloud.client.registration_attempts("dev-fulldisk") == 1
    cloud.client.set_group_allocation("default", "hashed", [hub])
    cloud.client.disable_device("dev-fulldisk", hub=hub)
    (seed / "status.json").unlink()  # a live status would only take room
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    full = write_config(tmp_path / "full.toml", cloud, device, state_dir=state, lifecycle=timing)
    command = [sys.executable, "-c", _RESTARTS, str(full.source), str(seed), str(state), str(logs)]
    result = subprocess.run(
        small_tmpfs_argv(state, 64, command),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout)
    assert [r["exit"] for r in runs] == [0] * 10
    assert all(r["backed_off"] for r in runs), runs
    assert any(r["in_place"] for r in runs), runs  # the disk really was full
    attempts = cloud.client.registration_attempts("dev-fulldisk")
    assert attempts == budget, (attempts, runs)
    assert sum(r["registered"] for r in runs) == budget - 1
    shutil.rmtree(logs)
