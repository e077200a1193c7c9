"""`make demo`: devcloud + the real agent with the mock HAL, provisioning, telemetry, a move.

Steps (each bounded in time; any failure stops everything and exits non-zero):

1. start ``devcloud serve`` with its defaults (DPS 127.0.0.2:8883, hubs 127.0.0.3 and
   127.0.0.4, REST 127.0.0.1:8088), its state in a temporary folder;
2. issue a device certificate from devcloud's PKI;
3. write an agent config (mock HAL) and start ``device-agent run``;
4. show the DPS assignment and telemetry arriving in devcloud;
5. point the enrollment group at the other hub, invoke the ``reprovision`` direct method,
   and show the device arrive on the other hub;
6. with ``KEEP=1`` (``make demo KEEP=1``): leave both running so the web console
   (printed in step 1) can be looked at, until Ctrl-C or SIGTERM;
7. stop the agent and devcloud with SIGTERM and check both exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devcloud.client import DevCloudClient  # noqa: E402
from devcloud.pki import PKI  # noqa: E402

T = TypeVar("T")
DEVICE = "demo-device-001"
REST_URL = "http://127.0.0.1:8088"
CONSOLE_URL = f"{REST_URL}/console/"
TOTAL_BUDGET_S = 90.0
STARTED = time.monotonic()


class DemoError(Exception):
    """A step did not happen in time, or went wrong."""


def say(text: str) -> None:
    """Print one line of the demo's narration, with the seconds since it started."""
    print(f"[{time.monotonic() - STARTED:5.1f}s] {text}", flush=True)


def step(title: str) -> None:
    """Print the heading of the next step."""
    print(f"\n== {title}", flush=True)


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = 15.0) -> T:
    """Poll ``check`` until it returns a value; DemoError after ``timeout_s``."""
    deadline = time.monotonic() + min(timeout_s, TOTAL_BUDGET_S - (time.monotonic() - STARTED))
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Process:
    """A child process whose output lines are collected by a reader thread."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.lines: list[str] = []
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            # Its own session: Ctrl-C in the terminal reaches the demo, which then stops
            # the children itself (SIGTERM) and checks their exit codes.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._log.write(line)
            self._log.flush()

    def saw(self, text: str) -> bool:
        """Whether a line so far contains ``text``; DemoError if the process died without."""
        if self.proc.poll() is not None and not any(text in line for line in self.lines):
            raise DemoError(f"{self.name} exited with {self.proc.returncode}:\n" + self.tail())
        return any(text in line for line in self.lines)

    def tail(self, n: int = 15) -> str:
        """The last ``n`` lines of output, indented, for an error report."""
        return "\n".join(f"    {line}" for line in self.lines[-n:])

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait, and return the exit code (kill if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise DemoError(f"{self.name} did not stop within {timeout_s:g} s") from None
        self._reader.join(5)
        self._log.close()
        return int(self.proc.returncode)


def write_agent_config(folder: Path, pki_dir: Path, cert: Any) -> Path:
    """Write the agent's config for devcloud's defaults and the mock HAL; return its path."""
    root = pki_dir / "ca" / "root.pem"
    path = folder / "agent.toml"
    path.write_text(
        f"""# Written by deploy/demo.py: the agent against devcloud's defaults, mock HAL.
[identity]
keystore = "file"
cert_chain_path = "{cert.chain_path}"
key_path = "{cert.key_path}"
trust_anchor_paths = ["{root}"]

[dps]
host = "127.0.0.2"
port = 8883
id_scope = "0ne00000DEV"
server_ca_path = "{root}"
allowed_hub_suffixes = ["127.0.0.3", "127.0.0.4"]

[dps.payload]
model = "demo"

[hub]
port = 8883
server_ca_path = "{root}"
keep_alive_s = 30

[lifecycle]
backoff_base_s = 0.2
backoff_cap_s = 5.0
dps_backoff_cap_s = 5.0
rejected_retry_s = 5.0
connect_timeout_s = 5.0

[telemetry]
interval_s = 1.0

[state]
directory = "{folder / "agent-state"}"

[hal]
backend = "mock"
mock_seed = 1
sensors = [
    {{ part = "BME280", bus = 1, address = 0x76 }},
    {{ part = "BH1750", bus = 1, address = 0x23 }},
]

[log]
level = "INFO"
"""
    )
    return path


def summarize(message: Any) -> str:
    """One line for a telemetry message: sequence, hub, timestamp and readings."""
    body = message.json()
    parts = []
    for sensor, values in body.get("readings", {}).items():
        shown = ", ".join(f"{v['value']:.1f} {v['unit']}" for v in values.values())
        parts.append(f"{sensor}: {shown}")
    return f"#{body['sequence']} via {message.hub} at {body['timestamp']}  " + "; ".join(parts)


@contextlib.contextmanager
def processes() -> Iterator[list[Process]]:
    """A list to add started processes to; whatever still runs at the end is stopped."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            if proc.proc.poll() is None:
                with contextlib.suppress(DemoError):
                    proc.stop(5)


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM arrives (then return, so the demo stops cleanly)."""
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        while not stop.wait(3600):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(flush=True)


def demo(folder: Path, started: list[Process], *, keep: bool = False) -> None:
    """Steps 1-7 (see the module docstring) in ``folder``; raises on the first failure."""
    step("1. devcloud (DPS 127.0.0.2:8883, hubs 127.0.0.3 / 127.0.0.4, REST 127.0.0.1:8088)")
    state = folder / "devcloud"
    cloud = Process(
        "devcloud",
        [sys.executable, "-m", "devcloud", "serve", "--state-dir", str(state)],
        folder / "devcloud.log",
    )
    started.append(cloud)
    wait_for(lambda: cloud.saw("devcloud: ready"), "devcloud to be ready")
    for line in cloud.lines:
        if line.startswith("devcloud: ") and "ready" not in line:
            say(line.removeprefix("devcloud: "))
    say(f"open the web console: {CONSOLE_URL}")
    client = DevCloudClient(REST_URL, timeout_s=10)

    step("2. a device certificate from devcloud's PKI")
    pki = PKI.create(state / "pki")
    cert = pki.issue_device(DEVICE)
    say(f"issued CN={DEVICE}, thumbprint {cert.thumbprint[:16]}...")
    say(f"chain {cert.chain_path}")

    step("3. device-agent run (mock HAL)")
    config = write_agent_config(folder, state / "pki", cert)
    since = client.last_sequence_number()
    agent = Process(
        "device-agent",
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        folder / "agent.log",
    )
    started.append(agent)

    step("4. provisioning and telemetry")
    first_hub = wait_for(
        lambda: _connected_hub(folder / "agent-state" / "status.json"),
        "the agent to provision and connect",
        timeout_s=20,
    )
    hubs = {h["hostname"]: h["name"] for h in client.hubs()}
    attempts = client.registration_attempts(DEVICE)
    say(f"DPS assigned {DEVICE} to {hubs[first_hub]} ({first_hub}); {attempts} register request")
    messages = client.wait_for_telemetry(since=since, device_id=DEVICE, count=3, timeout_s=10)
    for message in messages:
        say(summarize(message))
    since = messages[-1].sequence_number

    step("5. reprovision by direct method, with DPS now allocating to the other hub")
    old_name = hubs[first_hub]
    new_name = next(name for name in hubs.values() if name != old_name)
    client.set_group_allocation("default", "hashed", [new_name])
    say(f"enrollment group 'default' now allocates to {new_name} only")
    status, payload = client.invoke_method(DEVICE, "reprovision", {}, timeout_s=10)
    say(f"reprovision -> {status} {json.dumps(payload)}")
    if status != 202:
        raise DemoError(f"reprovision answered {status}")
    moved = client.wait_for_telemetry(
        since=since, device_id=DEVICE, hub=new_name, count=2, timeout_s=20
    )
    for message in moved:
        say(summarize(message))
    say(f"device moved: {old_name} -> {new_name}")
    device = client.get_device(DEVICE, hub=new_name)
    say(f"{new_name} says: {device.get('status')}, {device.get('connectionState')}")

    if keep:
        step(f"6. keeping devcloud and the agent running: the console is at {CONSOLE_URL}")
        say("press Ctrl-C (or send SIGTERM) to stop")
        wait_for_stop_signal()
    step("7. stop everything")
    code = agent.stop()
    say(f"device-agent exited {code}")
    if code != 0:
        raise DemoError(f"device-agent exited {code}:\n{agent.tail()}")
    code = cloud.stop()
    say(f"devcloud exited {code}")
    if code != 0:
        raise DemoError(f"devcloud exited {code}:\n{cloud.tail()}")


def _connected_hub(status_path: Path) -> str | None:
    try:
        status = json.loads(status_path.read_text())
    except (OSError, ValueError):
        return None
    return status.get("hub") if status.get("state") == "CONNECTED" else None


def main() -> int:
    """Run the demo in a temporary folder; 0 if every step happened, else 1.

    ``KEEP=1`` in the environment (``make demo KEEP=1``) keeps it running after step 5.
    """
    keep = os.environ.get("KEEP", "") not in ("", "0")
    with tempfile.TemporaryDirectory(prefix="device-agent-demo-") as tmp, processes() as started:
        folder = Path(tmp)
        try:
            demo(folder, started, keep=keep)
        except Exception as exc:
            print(f"\ndemo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            for proc in started:
                print(f"--- last lines of {proc.name}:\n{proc.tail()}", file=sys.stderr)
            return 1
    print(f"\ndemo OK in {time.monotonic() - STARTED:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
