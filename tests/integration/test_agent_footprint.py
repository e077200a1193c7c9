"""What the running agent loads: structural footprint facts, checked on the real process.

The benchmarks (bench/) measure how long a boot takes and how much memory the agent
holds; these tests keep the structure those figures rest on, without any timing: a
warm boot (cached hub) never loads the DPS code, the SQLite buffer or ``cryptography``,
and a cold boot loads DPS but keeps ``cryptography`` in the keystore check child. The
agent runs as ``python -m agent`` under a wrapper whose audit hook notes every import
with the wall-clock time; imports after SIGTERM was sent (the shutdown's final buffer
commit may open SQLite) do not count, and a warm boot is judged when it starts with an
empty buffer (one that must send what the last stop committed opens SQLite, rightly).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.agentcloud import Cloud, issue_device, wait_until, write_config

pytestmark = pytest.mark.integration

#: ``python -c WRAPPER NOTES --config F run``: the agent, with its imports noted in NOTES.
WRAPPER = """
import sys, time
_notes = []
def _hook(event, args):
    if event == "import":
        _notes.append((str(args[0]), time.time()))
sys.addaudithook(_hook)
import atexit, json, runpy
_out = sys.argv[1]
atexit.register(lambda: open(_out, "w").write(json.dumps(_notes)))
sys.argv = ["device-agent", *sys.argv[2:]]
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""
#: Never in a warm boot's daemon before it is asked to stop.
NOT_ON_A_WARM_BOOT = (
    "agent.core.provisioning",
    "agent.core.wire.dps",
    "agent.core.credentials",
    "sqlite3",
    "cryptography",
    "subprocess",
)


def boot(config: Path, tmp_path: Path, cloud: Cloud, name: str, device_id: str) -> set[str]:
    """Run the agent until it has sent telemetry; the modules it imported before SIGTERM."""
    notes = tmp_path / f"{name}.json"
    since = len(cloud.client.telemetry(device_id=device_id))
    with (tmp_path / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, str(notes), "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": ""},
        )
        try:
            wait_until(
                lambda: len(cloud.client.telemetry(device_id=device_id)) >= since + 2,
                timeout_s=30,
                what=f"{name}: telemetry",
            )
            stopped_at = time.time()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    imported = json.loads(notes.read_text())
    assert imported, "the audit hook noted no import"
    return {module for module, at in imported if at < stopped_at}


def test_a_warm_boot_loads_no_dps_code_no_sqlite_and_no_cryptography(
    cloud: Cloud, tmp_path: Path
) -> None:
    device = issue_device(cloud, "dev-footprint")
    config = tmp_path / "agent.toml"
    write_config(config, cloud, device, state_dir=tmp_path / "state", buffer="sqlite")

    cold = boot(config, tmp_path, cloud, "cold", "dev-footprint")
    assert {"agent.core.provisioning", "agent.core.wire.dps", "paho.mqtt.client"} <= cold
    assert "cryptography" not in cold  # the keystore check child imports it, not the daemon
    assert "sqlite3" not in cold  # nothing had to be buffered

    # A stop that catches a message in flight commits it, and the next start must then open
    # the buffer to send it: judge the first warm boot that starts with an empty buffer.
    state = tmp_path / "state"
    for attempt in range(5):
        empty = (state / "telemetry.db.empty").exists() or not (state / "telemetry.db").exists()
        warm = boot(config, tmp_path, cloud, f"warm{attempt}", "dev-footprint")
        if empty:
            break
    else:
        pytest.fail("five stops in a row left a message in flight")
    assert "paho.mqtt.client" in warm  # the hook saw the imports
    assert [m for m in NOT_ON_A_WARM_BOOT if m in warm] == []
    log = (tmp_path / f"warm{attempt}.log").read_text()
    assert "keystore check child skipped" in log
