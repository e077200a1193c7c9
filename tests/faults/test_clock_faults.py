"""The clock at 1970 at boot (no RTC, no NTP yet): no TLS until it is sane, said clearly.

Only the agent process gets the wrong clock: libfaketime (Debian's ``libfaketime``)
preloaded into it, reading the fake time from a file the test rewrites when "NTP" has
synced. libfaketime also fakes the monotonic clock here (its ``clock_nanosleep`` hangs
when it does not), so at the sync both clocks jump forward together; the agent must
take that in its stride too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.agentcloud import Cloud, issue_device, write_config
from tests.support.waiting import wait_until

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
DEVICE_AGENT = [sys.executable, "-m", "agent"]
BOOT_1970 = "@1970-01-01 00:00:42\n"


def faked_env(clock_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NOTIFY_SOCKET": "",
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(clock_file),
        "FAKETIME_CACHE_DURATION": "1",
    }


def holds(predicate: Callable[[], bool], *, for_s: float, what: str) -> None:
    """Fail if ``predicate`` turns false within ``for_s`` (a negative check needs a window)."""
    deadline = time.monotonic() + for_s
    for _ in range(int(for_s / 0.05) + 10):
        assert predicate(), f"{what} no longer held"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def status_state(state_dir: Path) -> str | None:
    try:
        return str(json.loads((state_dir / "status.json").read_text()).get("state"))
    except (OSError, ValueError):
        return None


def test_a_1970_clock_holds_tls_back_until_it_is_sane_and_says_so(
    cloud: Cloud, tmp_path: Path
) -> None:
    assert LIBFAKETIME.exists(), "libfaketime missing: the Makefile installs it"
    device = issue_device(cloud, "dev-1970")
    state_dir = tmp_path / "state"
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir)
    clock_file = tmp_path / "faketime"
    clock_file.write_text(BOOT_1970)
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*DEVICE_AGENT, "--config", str(tmp_path / "agent.toml"), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=faked_env(clock_file),
        )
    try:
        wait_until(
            lambda: status_state(state_dir) not in (None, "STARTING"),
            timeout_s=20,
            what="the agent past its start",
        )
        holds(
            lambda: cloud.client.registration_attempts("dev-1970") == 0,
            for_s=2.0,
            what="no DPS registration with a 1970 clock",
        )
        text = log.read_text()
        clock_lines = [line for line in text.splitlines() if "clock" in line.lower()]
        assert clock_lines, text[-2000:]  # said clearly: the clock, not just the certificate
        assert "1970" in clock_lines[0], clock_lines[0]
        assert len(clock_lines) <= 3, clock_lines  # said once (or so), not a line per tick
        clock_file.write_text("+0\n")  # NTP synced
        got = cloud.client.wait_for_telemetry(device_id="dev-1970", count=2, timeout_s=30)
        stamps = [message.json()["timestamp"] for message in got]
        assert not any(stamp.startswith("1970") for stamp in stamps), stamps
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
