"""Connected and steady: idle wakeups and CPU, CPU per message, a large backlog drain.

Theory of operation
-------------------
* :func:`idle` starts one device per client *at the same time* (they are idle, so they
  hardly disturb each other, and a 10-minute window is spent once), waits until each
  delivered its first message and a few seconds more (twin, subscriptions), then reads
  ``/proc`` at the start and the end of ``idle_s``: CPU time (utime+stime, all threads)
  and context switches (voluntary + nonvoluntary, summed over every thread; a thread
  that is woken from sleep makes one voluntary switch when it sleeps again, so this
  counts wakeups, plus the rare preemption). ``perf`` and ``strace`` are not needed and
  would disturb what they measure.
* :func:`cpu_per_messages` runs one device at a time at a short interval and reads its
  CPU time when devcloud has stored message ``k`` and message ``k + cpu_messages``:
  CPU seconds per 1,000 messages delivered (sampling, encoding, TLS, acknowledgements).
  For the agent it also takes the loop's own stall histogram from the ``status.json``
  it writes when it stops (every wakeup of the whole run, the boot included).
* :func:`large_backlog` holds back the PUBACKs of a connected device (devcloud's
  ``puback_delay_s`` set to the whole fill time) while it samples every
  ``backlog_interval_s`` (with no sensors, so that a sample takes no conversion time and
  the queue fills at that pace) into a queue bounded at the backlog size: its in-flight window
  fills and everything else waits in its queue, as behind a stalled link. Just before
  the fill ends the twin's desired ``telemetryIntervalSeconds`` is set to 3600, so
  sampling all but stops; then each PUBACK is held ``puback_delay_s`` (a simulated round
  trip) and the held ones come due. The result is the delivery rate over the backlog:
  messages stored after the release divided by the time from the first to the last of
  them (no reconnect is involved, so neither client's backoff enters the number).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.cloud import BenchCloud, enqueued_epoch_s
from bench.devices import DeviceProcess, DeviceSpec, Launcher, Overrides, running, stop_all
from bench.settings import BenchSettings


class SteadyError(RuntimeError):
    """A steady-state benchmark step did not happen within its bound."""


@dataclass(frozen=True)
class Idle:
    """One client idle at a long interval."""

    duration_s: float
    cpu_s: float
    context_switches: int
    threads: int

    @property
    def wakeups_per_s(self) -> float:
        """Context switches per second."""
        return self.context_switches / self.duration_s

    @property
    def cpu_s_per_min(self) -> float:
        """CPU seconds per minute."""
        return self.cpu_s / self.duration_s * 60

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields, with the derived rates."""
        return {
            **asdict(self),
            "wakeups_per_s": self.wakeups_per_s,
            "cpu_s_per_min": self.cpu_s_per_min,
        }


def _wait_connected(
    cloud: BenchCloud, names: Sequence[str], since: int, settings: BenchSettings
) -> None:
    firsts = cloud.first_messages(names, since=since, timeout_s=settings.boot_timeout_s)
    missing = [n for n in names if n not in firsts]
    if missing:
        raise SteadyError(f"not connected: {', '.join(missing)}")


def idle(
    cloud: BenchCloud,
    launchers: Sequence[Launcher],
    specs: Sequence[DeviceSpec],
    settings: BenchSettings,
) -> dict[str, Idle]:
    """Every launcher's device connected and idle at ``idle_interval_s``, side by side."""
    cloud.allocate_to("hub1")
    since = cloud.client.last_sequence_number()
    overrides = Overrides(interval_s=settings.idle_interval_s)
    processes: list[DeviceProcess] = []
    try:
        for launcher, spec in zip(launchers, specs, strict=True):
            launcher.wipe_state(spec)
            processes.append(launcher.start(spec, overrides))
        _wait_connected(cloud, [s.name for s in specs], since, settings)
        threading.Event().wait(settings.settle_s)  # let connect-time work finish; a chosen pause
        before = [p.cpu() for p in processes]
        started = time.monotonic()
        threading.Event().wait(settings.idle_s)  # the idle window itself
        after = [p.cpu() for p in processes]
        duration = time.monotonic() - started
    finally:
        stop_all(processes)
    return {
        launcher.kind: Idle(
            duration_s=duration,
            cpu_s=b.cpu_s - a.cpu_s,
            context_switches=b.context_switches - a.context_switches,
            threads=b.threads,
        )
        for launcher, a, b in zip(launchers, before, after, strict=True)
    }


def loop_stats(spec: DeviceSpec) -> dict[str, Any] | None:
    """The agent's own loop statistics from its last ``status.json`` (None: not the agent)."""
    path = spec.folder / "agent-state" / "status.json"
    try:
        loop = json.loads(path.read_text()).get("loop")
    except (OSError, ValueError):
        return None
    return loop if isinstance(loop, dict) else None


@dataclass(frozen=True)
class CpuPerMessages:
    """CPU time over a run of delivered messages."""

    messages: int
    cpu_s: float
    wall_s: float
    #: The agent's loop: wakeups, longest stall, stall histogram (ms) over the whole run.
    loop: dict[str, Any] | None = None
    max_stall_ms: float | None = None

    @property
    def cpu_s_per_1000(self) -> float:
        """CPU seconds per 1,000 messages."""
        return self.cpu_s / self.messages * 1000

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields, with the derived rate."""
        return {**asdict(self), "cpu_s_per_1000": self.cpu_s_per_1000}


def cpu_per_messages(
    cloud: BenchCloud, launcher: Launcher, spec: DeviceSpec, settings: BenchSettings
) -> CpuPerMessages:
    """CPU seconds the device spends while ``cpu_messages`` messages are delivered."""
    cloud.allocate_to("hub1")
    launcher.wipe_state(spec)
    name = spec.name
    since = cloud.client.last_sequence_number()
    overrides = Overrides(interval_s=settings.cpu_interval_s)
    with running(launcher, [spec], overrides) as (device,):
        warm = cloud.messages([name], since=since, count=5, timeout_s=settings.boot_timeout_s)
        if len(warm[name]) < 5:
            raise SteadyError(f"{name}: not sending\n{device.tail()}")
        threading.Event().wait(settings.settle_s)  # past connect-time work (twin, ...)
        mark = cloud.client.last_sequence_number()
        before = device.cpu()
        started = time.monotonic()
        got = cloud.messages(
            [name], since=mark, count=settings.cpu_messages, timeout_s=settings.drain_timeout_s
        )[name]
        after = device.cpu()
        wall = time.monotonic() - started
        stop_all([device])
    if len(got) < settings.cpu_messages:
        raise SteadyError(f"{name}: {len(got)} of {settings.cpu_messages} messages")
    loop = loop_stats(spec)
    stall = None if loop is None else float(loop.get("maxStallMs", 0.0))
    return CpuPerMessages(len(got), after.cpu_s - before.cpu_s, wall, loop, stall)


@dataclass(frozen=True)
class LargeBacklog:
    """A full backlog delivered with PUBACKs held back."""

    buffered_target: int
    delivered: int
    drain_s: float | None
    #: From the release to the first message stored.
    reconnect_s: float | None
    duplicates: int

    @property
    def messages_per_s(self) -> float | None:
        """Delivery rate over the backlog."""
        if not self.drain_s:
            return None
        return (self.delivered - 1) / self.drain_s

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields, with the derived rate."""
        return {**asdict(self), "messages_per_s": self.messages_per_s}


def large_backlog(
    cloud: BenchCloud,
    launcher: Launcher,
    spec: DeviceSpec,
    settings: BenchSettings,
    messages: int,
) -> LargeBacklog:
    """Buffer ``messages`` behind held PUBACKs, then drain them through a slow PUBACK."""
    name = spec.name
    hub = "hub1"
    cloud.allocate_to(hub)
    launcher.wipe_state(spec)
    since = cloud.client.last_sequence_number()
    overrides = Overrides(
        interval_s=settings.backlog_interval_s,
        queue_max_messages=messages,
        follow_twin_interval=True,
        sensors=(),  # a sample costs no conversion time: the queue fills at the interval
    )
    server = cloud.handle.app.hub_servers[hub]

    def hold(delay_s: float) -> None:
        cloud.handle.call(lambda _app: setattr(server, "puback_delay_s", delay_s))

    fill_s = messages * settings.backlog_interval_s * 1.3 + 1.0  # room for a slow sampler
    with running(launcher, [spec], overrides) as (device,):
        got = cloud.messages([name], since=since, count=3, timeout_s=settings.boot_timeout_s)
        if len(got[name]) < 3:
            raise SteadyError(f"{name}: not connected\n{device.tail()}")
        try:
            hold(fill_s)  # what is in flight now is acknowledged only when the fill ends
            filling_until = time.monotonic() + fill_s
            threading.Event().wait(max(0.0, fill_s - 0.5))  # the fill itself
            cloud.client.patch_twin_desired(name, {"telemetryIntervalSeconds": 3600}, hub=hub)
            threading.Event().wait(max(0.0, filling_until - time.monotonic()))
            hold(settings.puback_delay_s)
            mark = cloud.client.last_sequence_number()
            released_at = time.time()
            after = _until_quiet(cloud, name, mark, settings)
        finally:
            hold(0.0)
        stop_all([device])
    if len(after) < 2:
        return LargeBacklog(messages, len(after), None, None, 0)
    times = [enqueued_epoch_s(m) for m in after]
    sequences = [int(m.json()["sequence"]) for m in after]
    return LargeBacklog(
        buffered_target=messages,
        delivered=len(after),
        drain_s=max(times) - min(times),
        reconnect_s=min(times) - released_at,
        duplicates=len(sequences) - len(set(sequences)),
    )


def _until_quiet(cloud: BenchCloud, name: str, since: int, settings: BenchSettings) -> list[Any]:
    found: list[Any] = []
    after = since
    deadline = time.monotonic() + settings.drain_timeout_s + settings.boot_timeout_s
    last_new = time.monotonic()
    for _ in range(100_000):  # bounded; each round long-polls up to 1 s
        now = time.monotonic()
        if now >= deadline or (found and now - last_new >= settings.drain_quiet_s):
            break
        batch = cloud.client.telemetry(after, limit=1000, wait_s=1.0)
        mine = [m for m in batch if m.device_id == name]
        if mine:
            found += mine
            last_new = time.monotonic()
        if batch:
            after = batch[-1].sequence_number
    return found
