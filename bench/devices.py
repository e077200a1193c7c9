"""The two device programs under test, as processes: device-agent and the SDK equivalent.

Theory of operation
-------------------
A :class:`Launcher` knows how to start one kind of device program for a
:class:`DeviceSpec` (identity, folder) against a :class:`~bench.cloud.BenchCloud`:

* :class:`AgentLauncher` writes an agent TOML (devcloud's addresses, the mock HAL, the
  benchmark's interval; every lifecycle setting left at its default) and runs
  ``python -m agent --config F run`` with the interpreter it is given: the installed,
  compiled copy of :func:`bench.venvs.agent_venv` in a measuring run, the project's own
  (editable) one in a smoke run;
* :class:`SDKLauncher` runs ``bench/sdk_device.py`` with the reference venv's
  interpreter (``azure-iot-device`` 2.14.0), the HAL from ``hal_root``.

Both run in the device's folder, never in the project folder, so that ``python -m``
cannot pick the source tree up ahead of the installed package. :class:`Overrides`
changes a start's interval or queue bound (the backlog and CPU benchmarks).

Each program's state lives in the spec's folder (the agent's state directory, the SDK's
state file), so a second start is a warm boot and :meth:`Launcher.wipe_state` makes the
next one cold. A :class:`DeviceProcess` is the running program: the wall-clock time it
was started, its ``/proc`` status, and a bounded :meth:`DeviceProcess.stop` (SIGTERM,
then SIGKILL). Output goes to a log file per device, never to a pipe that could fill.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
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
#: azure-iot-device 2.14's provisioning polling interval (it waits this before a poll).
SDK_POLLING_INTERVAL_S = 2.0


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
class CpuStatus:
    """CPU time and context switches of a process, summed over its threads."""

    cpu_s: float
    context_switches: int
    threads: int


def cpu_status(pid: int) -> CpuStatus:
    """utime+stime from ``/proc/PID/stat``; voluntary+nonvoluntary switches of every task.

    A thread that sleeps and is woken makes one voluntary context switch when it blocks
    again, so the sum over all tasks counts the process's wakeups (plus preemptions,
    the nonvoluntary ones). Threads that ended meanwhile are not counted.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks
    switches = 0
    tasks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # ended meanwhile
        tasks += 1
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                switches += int(line.split()[1])
    return CpuStatus(cpu_s, switches, tasks)


@dataclass(frozen=True)
class Overrides:
    """Changes to one start's settings (None: the benchmark's own)."""

    interval_s: float | None = None
    queue_max_messages: int | None = None
    #: The SDK program takes its interval from the twin, as the agent always does.
    follow_twin_interval: bool = False
    #: Mock sensors (None: the benchmark's); () for none, so sampling costs nothing.
    sensors: tuple[str, ...] | None = None
    #: Added to the program's niceness (the storm: the emulated fleet must not starve
    #: the emulated cloud, which in reality runs on other machines).
    nice_increment: int = 0


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: its identity and its folder (state and logs)."""

    name: str
    identity: Issued
    folder: Path


class DeviceProcess:
    """A running device program."""

    def __init__(
        self, kind: str, argv: Sequence[str], log_path: Path, cwd: Path, nice_increment: int = 0
    ) -> None:
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
            cwd=cwd,
        )
        if nice_increment:
            with contextlib.suppress(OSError):  # it may have exited already
                priority = os.getpriority(os.PRIO_PROCESS, self.process.pid)
                os.setpriority(os.PRIO_PROCESS, self.process.pid, priority + nice_increment)

    @property
    def pid(self) -> int:
        """The program's process id."""
        return self.process.pid

    def status(self) -> ProcStatus:
        """Its RSS and thread count now."""
        self._check_running()
        return proc_status(self.pid)

    def cpu(self) -> CpuStatus:
        """Its CPU time and context switches so far."""
        self._check_running()
        return cpu_status(self.pid)

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.kind} exited with {self.process.returncode}: {self.tail()}")

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

    def start(self, spec: DeviceSpec, overrides: Overrides = ...) -> DeviceProcess:
        """Start the program for ``spec`` (cold or warm, as its folder says)."""
        ...

    def dps_poll_wait_s(self, retry_after_s: float) -> float:
        """How long the program waits after a 202 before it polls (DPS-imposed)."""
        ...

    def wipe_state(self, spec: DeviceSpec) -> None:
        """Forget the persisted assignment, so the next start is a cold boot."""
        ...


class AgentLauncher:
    """device-agent (``python -m agent run``) with the mock HAL."""

    kind = "agent"

    def __init__(self, cloud: BenchCloud, settings: BenchSettings, python: Path) -> None:
        self.cloud = cloud
        self.settings = settings
        self.python = python

    def dps_poll_wait_s(self, retry_after_s: float) -> float:
        """The agent polls when the 202's retry-after says."""
        return retry_after_s

    def config_path(self, spec: DeviceSpec) -> Path:
        """Where the device's agent TOML is written."""
        return spec.folder / "agent.toml"

    def write_config(self, spec: DeviceSpec, overrides: Overrides = Overrides()) -> Path:
        """The agent configuration for ``spec`` (lifecycle timings at their defaults)."""
        ca = self.cloud.ca_path
        interval_s = overrides.interval_s or self.settings.interval_s
        queue_max = overrides.queue_max_messages or 1000
        chosen = self.settings.sensors if overrides.sensors is None else overrides.sensors
        sensors = ", ".join(_sensor_table(text) for text in chosen)
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
allowed_hub_suffixes = {json.dumps(sorted(self.cloud.hub_hosts.values()))}

[hub]
port = 8883
server_ca_path = "{ca}"

[telemetry]
interval_s = {interval_s}
queue_max_messages = {queue_max}

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

    def start(self, spec: DeviceSpec, overrides: Overrides = Overrides()) -> DeviceProcess:
        """Start ``device-agent run``."""
        spec.folder.mkdir(parents=True, exist_ok=True)
        config = self.write_config(spec, overrides)
        argv = [str(self.python), "-m", "agent", "--config", str(config), "run"]
        return DeviceProcess(
            self.kind, argv, spec.folder / "agent.log", spec.folder, overrides.nice_increment
        )

    def wipe_state(self, spec: DeviceSpec) -> None:
        """Remove the agent's state directory."""
        shutil.rmtree(spec.folder / "agent-state", ignore_errors=True)


class SDKLauncher:
    """``bench/sdk_device.py`` under the reference SDK venv."""

    kind = "sdk"

    def __init__(
        self, cloud: BenchCloud, settings: BenchSettings, python: Path, hal_root: Path = ROOT
    ) -> None:
        self.cloud = cloud
        self.settings = settings
        self.python = python
        self.hal_root = hal_root

    def dps_poll_wait_s(self, retry_after_s: float) -> float:
        """SDK 2.14 polls after a fixed 2 s (its default polling interval), or later."""
        return max(SDK_POLLING_INTERVAL_S, retry_after_s)

    def start(self, spec: DeviceSpec, overrides: Overrides = Overrides()) -> DeviceProcess:
        """Start the SDK device program."""
        spec.folder.mkdir(parents=True, exist_ok=True)
        interval_s = overrides.interval_s or self.settings.interval_s
        queue_max = overrides.queue_max_messages or 1000
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
            str(interval_s),
            "--queue-max-messages",
            str(queue_max),
            "--connection-retry-interval",
            str(self.settings.sdk_connection_retry_interval_s),
            "--project-root",
            str(self.hal_root),
        ]
        for sensor in self.settings.sensors if overrides.sensors is None else overrides.sensors:
            argv += ["--sensor", sensor]
        if overrides.follow_twin_interval:
            argv.append("--follow-twin-interval")
        return DeviceProcess(
            self.kind, argv, spec.folder / "sdk.log", spec.folder, overrides.nice_increment
        )

    def wipe_state(self, spec: DeviceSpec) -> None:
        """Remove the SDK program's state file."""
        (spec.folder / "sdk-state.json").unlink(missing_ok=True)


def _sensor_table(text: str) -> str:
    part, _, rest = text.partition("@")
    bus, _, address = rest.partition(":")
    return f'{{part = "{part}", bus = {int(bus)}, address = {int(address, 0)}}}'


@contextlib.contextmanager
def running(
    launcher: Launcher, specs: Sequence[DeviceSpec], overrides: Overrides = Overrides()
) -> Iterator[list[DeviceProcess]]:
    """Start every spec at once; on exit SIGTERM them all, then wait for each."""
    processes: list[DeviceProcess] = []
    try:
        for spec in specs:
            processes.append(launcher.start(spec, overrides))
        yield processes
    finally:
        stop_all(processes)


def stop_all(processes: Sequence[DeviceProcess]) -> list[int]:
    """SIGTERM every process first, then wait for each (bounded); their exit statuses."""
    for process in processes:
        process.terminate()
    return [process.stop() for process in processes]
