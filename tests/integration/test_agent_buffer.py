"""The durable buffer with the real agent process: offline, SIGKILL, then online again.

What was committed to ``telemetry.db`` before the kill (its ``high_water`` sequence)
reaches devcloud after the restart, with its original timestamp and sequence number,
and the numbering goes on after it instead of starting again at 1.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.agentcloud import Cloud, free_port, issue_device, wait_until, write_config

pytestmark = pytest.mark.integration


def high_water(db: Path) -> int:
    """The highest sequence the agent has committed (0 before the first commit)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'high_water'").fetchone()
    except sqlite3.OperationalError:
        return 0  # being created right now
    return int(row[0]) if row else 0


@contextmanager
def agent(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": ""},
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_committed_telemetry_survives_sigkill_and_is_sent_after_the_restart(
    cloud: Cloud, tmp_path: Path
) -> None:
    device = issue_device(cloud, "dev-buffer")
    state, config, log = tmp_path / "state", tmp_path / "agent.toml", tmp_path / "agent.log"
    fast = {"connect_timeout_s": 1.0}
    commits = "buffer_commit_interval_s = 0.3"
    # Offline: DPS on a port where nothing listens; the agent samples into the buffer.
    write_config(
        config,
        cloud,
        device,
        state_dir=state,
        dps_port=free_port(cloud.dps_host),
        lifecycle=fast,
        buffer="sqlite",
        telemetry_extra=commits,
    )
    db = state / "telemetry.db"
    with agent(config, log) as proc:
        wait_until(lambda: high_water(db) >= 5, timeout_s=20, what="5 messages committed")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    committed = high_water(db)
    killed_at = datetime.now().astimezone()
    # Online: the same state directory, the real DPS.
    write_config(
        config,
        cloud,
        device,
        state_dir=state,
        lifecycle=fast,
        buffer="sqlite",
        telemetry_extra=commits,
    )
    with agent(config, log) as proc:

        def sequences() -> dict[int, str]:
            got = cloud.client.telemetry(device_id="dev-buffer")
            return {int(m.json()["sequence"]): str(m.json()["timestamp"]) for m in got}

        wait_until(
            lambda: set(range(1, committed + 2)) <= set(sequences()),
            timeout_s=30,
            what=f"sequences 1..{committed} and a new one at devcloud",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()[-2000:]
    received = sequences()
    old = [datetime.fromisoformat(received[n].replace("Z", "+00:00")) for n in range(1, committed)]
    assert all(stamp < killed_at for stamp in old)  # their original sampling times
    bodies = cloud.client.telemetry(device_id="dev-buffer")
    by_sequence: dict[int, set[bytes]] = {}
    for m in bodies:
        by_sequence.setdefault(int(m.json()["sequence"]), set()).add(m.body)
    assert all(len(v) == 1 for v in by_sequence.values())  # duplicates only as the same message
