"""``make demo`` (deploy/demo.py) end to end, in a private network namespace.

The demo must use devcloud's fixed default addresses (127.0.0.2:8883, 127.0.0.3/.4,
REST 127.0.0.1:8088); inside ``unshare --net`` they clash with no other test run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netns import netns_argv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_provisions_sends_telemetry_moves_and_stops_cleanly() -> None:
    result = subprocess.run(
        # Its own PID namespace: should the demo hang and be killed at the timeout,
        # devcloud and the agent go with it.
        netns_argv([sys.executable, "deploy/demo.py"], own_pids=True),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assigned = re.search(r"DPS assigned demo-device-001 to (hub\d) .*; 1 register request", out)
    assert assigned, out
    moved = re.search(r"device moved: (hub\d) -> (hub\d)", out)
    assert moved, out
    assert moved.group(1) == assigned.group(1) != moved.group(2)
    assert re.search(rf"#\d+ via {moved.group(2)} at ", out), out  # telemetry on the new hub
    assert "reprovision -> 202" in out
    assert "device-agent exited 0" in out and "devcloud exited 0" in out
    assert "demo OK" in out
