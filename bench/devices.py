"""The two device programs under test, as processes: device-agent and the SDK equivalent.

Theory of operation
-------------------
A :class:`Launcher` knows how to start one kind of device program for a
:class:`DeviceSpec` (identity, folder) against a :class:`~bench.cloud.BenchCloud`:

* :class:`AgentLauncher` writes an agent TOML (devcloud's addresses, the mock HAL, the
  benchmark's interval; every lifecycle setting left at its default) and runs
  ``python -m agent --config F run`` with the project's interpreter;
* :class:`SDKLauncher` runs ``bench/sdk_device.py`` with the reference venv's
  interpreter (``azure-iot-device`` 2.14.0).

Each program's state lives in the spec's folder (the agent's state directory, the SDK's
state file), so a second start is a warm boot and :meth:`Launcher.wipe_state` makes the
next one cold. A :class:`DeviceProcess` is the running program: the wall-clock time it
was started, its ``/proc`` status, and a bounded :meth:`DeviceProcess.stop` (SIGTERM,
then SIGKILL). Output goes to a log file per device, never to a pipe that could fill.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from bench.cloud import BenchCloud
from bench.settings import BenchSettings
from devcloud.pki import Issued

ROOT = Path(__file__).resolve().parent.parent
SDK_SCRIPT = Path(__file__).resolve().parent / "sdk_device.py"
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ProcStatus:
    """What ``/proc/PID/status`` says about a process."""

    rss_kib: int
    peak_rss_kib: int
    threads: int

    @property
    def rss_mib(self) -> float:
        """Resident set size in MiB."""
        return self.rss_kib / 1024


def proc_status(pid: int) -> ProcStatus:
    """Read VmRSS, VmHWM and Threads of ``pid``."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return ProcStatus(
        rss_kib=int(fields["VmRSS"].split()[0]),
        peak_rss_kib=int(fields["VmHWM"].split()[0]),
        threads=int(fields["Threads"]),
    )


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: its identity and its folder (state and logs)."""

    name: str
    identity: Issued
    folder: Path


class DeviceProcess:
    """A running device program."""

    def __init__(self, kind: str, argv: Sequence[str], log_path: Path) -> None:
        self.kind = kind
        self.log_path = log_path
        self._log: IO[str] = log_path.open("a")
        self._log.write(f"\n=== start {time.time():.6f}: {' '.join(argv)}\n")
        self._log.flush()
        self.started_at_s = time.time()
        self._terminated = False
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        """The program's process id."""
        return self.process.pid

    def status(self) -> ProcStatus:
        """Its RSS and thread count now."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.kind} exited with {self.process.returncode}: {self.tail()}")
        return proc_status(self.pid)

    def terminate(self) -> None:
        """Send SIGTERM once (if still running): a second one is not a polite request."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.terminate()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait, SIGKILL if needed; return the exit status (negative: killed)."""
        self.terminate()
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        self._log.close()
        return code

    def tail(self, lines: int = 20) -> str:
        """The last lines of its log."""
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Launcher(Protocol):
    """Starts one kind of device program."""

    kind: str

    def start(self, spec: DeviceSpec) -> DeviceProcess:
        """Start the program for ``spec`` (cold or warm, as its folder says)."""
        ...

    def wipe_state(self, spec: DeviceSpec) -> None:
        """Forget the persisted assignment, so the next start is a cold boot."""
        ...


class AgentLauncher:
    """device-agent (``python -m agent run``) with the mock HAL."""

    kind = "agent"

    def __init__(self, cloud: BenchCloud, settings: BenchSettings) -> None:
        self.cloud = cloud
        self.settings = settings

    def config_path(self, spec: DeviceSpec) -> Path:
        """Where the device's agent TOML is written."""
        return spec.folder / "agent.toml"

    def write_config(self, spec: DeviceSpec) -> Path:
        """The agent configuration for ``spec`` (lifecycle timings at their defaults)."""
        ca = self.cloud.ca_path
        sensors = ", ".join(_sensor_table(text) for text in self.settings.sensors)
        path = self.config_path(spec)
        path.write_text(
            f"""# Written by bench/devices.py
[identity]
keystore = "file"
cert_chain_path = "{spec.identity.chain_path}"
key_path = "{spec.identity.key_path}"
trust_anchor_paths = ["{ca}"]

[dps]
host = "{self.cloud.dps_host}"
port = 8883
id_scope = "{self.cloud.id_scope}"
server_ca_path = "{ca}"

[hub]
port = 8883
server_ca_path = "{ca}"

[telemetry]
interval_s = {self.settings.interval_s}

[state]
directory = "{spec.folder / "agent-state"}"

[hal]
backend = "mock"
mock_seed = 1
sensors = [{sensors}]

[log]
level = "INFO"
"""
        )
        return path

    def start(self, spec: DeviceSpec) -> DeviceProcess:
        """Start ``device-agent run``."""
        spec.folder.mkdir(parents=True, exist_ok=True)
        config = self.write_config(spec)
        argv = [sys.executable, "-m", "agent", "--config", str(config), "run"]
        return DeviceProcess(self.kind, argv, spec.folder / "agent.log")

    def wipe_state(self, spec: DeviceSpec) -> None:
        """Remove the agent's state directory."""
        shutil.rmtree(spec.folder / "agent-state", ignore_errors=True)


class SDKLauncher:
    """``bench/sdk_device.py`` under the reference SDK venv."""

    kind = "sdk"

    def __init__(self, cloud: BenchCloud, settings: BenchSettings, python: Path) -> None:
        self.cloud = cloud
        self.settings = settings
        self.python = python

    def start(self, spec: DeviceSpec) -> DeviceProcess:
        """Start the SDK device program."""
        spec.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.python),
            str(SDK_SCRIPT),
            "--provisioning-host",
            self.cloud.dps_host,
            "--id-scope",
            self.cloud.id_scope,
            "--registration-id",
            spec.name,
            "--cert",
            str(spec.identity.chain_path),
            "--key",
            str(spec.identity.key_path),
            "--ca",
            str(self.cloud.ca_path),
            "--state-file",
            str(spec.folder / "sdk-state.json"),
            "--interval-s",
            str(self.settings.interval_s),
            "--connection-retry-interval",
            str(self.settings.sdk_connection_retry_interval_s),
            "--project-root",
            str(ROOT),
        ]
        for sensor in self.settings.sensors:
            argv += ["--sensor", sensor]
        return DeviceProcess(self.kind, argv, spec.folder / "sdk.log")

    def wipe_state(self, spec: DeviceSpec) -> None:
        """Remove the SDK program's state file."""
        (spec.folder / "sdk-state.json").unlink(missing_ok=True)


def _sensor_table(text: str) -> str:
    part, _, rest = text.partition("@")
    bus, _, address = rest.partition(":")
    return f'{{part = "{part}", bus = {int(bus)}, address = {int(address, 0)}}}'


@contextlib.contextmanager
def running(launcher: Launcher, specs: Sequence[DeviceSpec]) -> Iterator[list[DeviceProcess]]:
    """Start every spec at once; on exit SIGTERM them all, then wait for each."""
    processes: list[DeviceProcess] = []
    try:
        for spec in specs:
            processes.append(launcher.start(spec))
        yield processes
    finally:
        stop_all(processes)


def stop_all(processes: Sequence[DeviceProcess]) -> list[int]:
    """SIGTERM every process first, then wait for each (bounded); their exit statuses."""
    for process in processes:
        process.terminate()
    return [process.stop() for process in processes]
