"""The benchmarks themselves: boot cycle, backlog drain, reboot storm.

Theory of operation
-------------------
Every time is measured on devcloud's side: a device program is started at wall-clock
``t0`` and "connected" means devcloud stored a telemetry message from it, whose
``enqueuedTimeUtc`` (microseconds) minus ``t0`` is the boot time. The harness's own
polling latency never enters a result. DPS traffic is counted by devcloud
(``/dps/stats`` and :class:`~bench.cloud.DpsLog`), never by the device.

* :func:`boot_cycle` — one fresh device: cold boot (empty state, DPS), steady state
  (RSS and threads after ``steady_messages`` delivered), reprovision (the ``reprovision``
  method while DPS now allocates to the other hub, until the first message from that
  hub), SIGTERM, then warm boot (cached hub; DPS must see no request).
* :func:`backlog_drain` — a connected device's hub goes away for a while and comes
  back; how long until it reconnects and until everything sampled meanwhile arrived,
  and what was lost or duplicated (sequence numbers in the bodies).
* :func:`reboot_storm` — ``fleet_size`` devices started at once under a DPS throttle,
  three times: first boot, warm restart (no DPS requests allowed), and restart after
  their state was wiped; per phase DPS requests, 429s, requests that ignored a
  retry-after, and time until every device delivered a message. Every device is a
  separate process on this machine's cores, run at niceness ``STORM_NICENESS`` (the
  lowest priority): on a real fleet each device has its own CPU and the cloud runs
  elsewhere, so the emulated fleet must not starve the emulated cloud. Without it,
  devcloud's TLS handshakes time out under a 200-process start on 2 cores; at only 5
  nicer than devcloud, 200 runnable devices left devcloud about 1.5 % of the CPU (CFS
  weights 200 x 335 against 1024) and every DPS connection waited seconds on the cloud;
  at 19 (weight 15) devcloud keeps about a quarter while the fleet starts.

Every wait is bounded by a timeout from :class:`~bench.settings.BenchSettings`; every
process is stopped (SIGTERM, then SIGKILL) before a function returns or raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.cloud import BenchCloud, enqueued_epoch_s
from bench.devices import DeviceSpec, Launcher, Overrides, running, stop_all
from bench.settings import BenchSettings
from devcloud.client import Telemetry

#: Storm devices run at this niceness, the lowest priority (the harness and devcloud
#: keep theirs): see the module docstring.
STORM_NICENESS = 19


class BenchError(RuntimeError):
    """A benchmark step did not happen within its bound."""


def make_spec(cloud: BenchCloud, folder: Path, name: str) -> DeviceSpec:
    """A fresh device identity from devcloud's PKI, with its own folder."""
    return DeviceSpec(name, cloud.handle.pki.issue_device(name), folder / name)


def _attempts(cloud: BenchCloud, name: str) -> int:
    return cloud.client.registration_attempts(name)


def _body(message: Telemetry) -> dict[str, Any]:
    body = message.json()
    if not isinstance(body, dict):
        raise BenchError(f"telemetry body is not a JSON object: {message.body[:80]!r}")
    return body


def _body_time_s(message: Telemetry) -> float:
    stamp = str(_body(message)["timestamp"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def _sequence(message: Telemetry) -> int:
    return int(_body(message)["sequence"])


# ----------------------------------------------------------------------------- boot cycle


@dataclass(frozen=True)
class BootCycle:
    """One device's boot cycle."""

    cold_boot_s: float
    cold_boot_dps_requests: int
    rss_mib: float
    peak_rss_mib: float
    threads: int
    reprovision_s: float
    reprovision_dps_requests: int
    reprovision_method_status: int
    warm_boot_s: float
    warm_boot_dps_requests: int
    exit_codes: tuple[int, int]
    #: Waits DPS imposed on the cold boot and the reprovision (retry-after of 202s and
    #: 429s, as long as the client waits for them: see Launcher.dps_poll_wait_s).
    cold_boot_dps_wait_s: float = 0.0
    reprovision_dps_wait_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = asdict(self)
        data["exit_codes"] = list(self.exit_codes)
        return data


def dps_wait_s(
    cloud: BenchCloud, launcher: Launcher, name: str, since_s: float, until_s: float
) -> float:
    """What DPS made ``name`` wait between two monotonic times (429s and 202s)."""
    poll_after_s = float(cloud.handle.app.provisioner.retry_after_s)
    total = 0.0
    for request in cloud.dps_log().select([name], since_s=since_s):
        if request.at_s > until_s:
            continue
        if request.throttled:
            total += float(request.retry_after_s or 0)
        else:
            total += launcher.dps_poll_wait_s(poll_after_s)
    return total


def boot_cycle(
    cloud: BenchCloud, launcher: Launcher, spec: DeviceSpec, settings: BenchSettings
) -> BootCycle:
    """Cold boot, steady state, reprovision to the other hub, stop, warm boot."""
    client = cloud.client
    name = spec.name
    cloud.allocate_to("hub1")
    cloud.dps_log()  # recording from here on
    launcher.wipe_state(spec)
    since = client.last_sequence_number()
    before = _attempts(cloud, name)
    cold_mark = time.monotonic()
    with running(launcher, [spec]) as (device,):
        got = cloud.messages(
            [name], since=since, count=settings.steady_messages, timeout_s=settings.boot_timeout_s
        )[name]
        if len(got) < settings.steady_messages:
            raise BenchError(f"{name}: {len(got)} messages after a cold boot\n{device.tail()}")
        cold_boot_s = enqueued_epoch_s(got[0]) - device.started_at_s
        cold_dps = _attempts(cloud, name) - before
        cold_wait = dps_wait_s(cloud, launcher, name, cold_mark, time.monotonic())
        status = device.status()

        cloud.allocate_to("hub2")
        since = client.last_sequence_number()
        before = _attempts(cloud, name)
        invoked_at = time.time()
        reprovision_mark = time.monotonic()
        method_status, _payload = client.invoke_method(name, "reprovision", {}, timeout_s=10.0)
        moved = cloud.messages(
            [name],
            since=since,
            timeout_s=settings.boot_timeout_s,
            until=lambda found: any(m.hub == "hub2" for m in found[name]),
        )[name]
        on_new_hub = [m for m in moved if m.hub == "hub2"]
        if not on_new_hub:
            raise BenchError(f"{name}: no message from hub2 after reprovision\n{device.tail()}")
        reprovision_s = enqueued_epoch_s(on_new_hub[0]) - invoked_at
        reprovision_dps = _attempts(cloud, name) - before
        reprovision_wait = dps_wait_s(cloud, launcher, name, reprovision_mark, time.monotonic())
        (first_exit,) = stop_all([device])

    since = client.last_sequence_number()
    before = _attempts(cloud, name)
    with running(launcher, [spec]) as (device,):
        firsts = cloud.first_messages([name], since=since, timeout_s=settings.boot_timeout_s)
        if name not in firsts:
            raise BenchError(f"{name}: no message after a warm boot\n{device.tail()}")
        warm_boot_s = enqueued_epoch_s(firsts[name]) - device.started_at_s
        warm_dps = _attempts(cloud, name) - before
        (second_exit,) = stop_all([device])
    return BootCycle(
        cold_boot_s=cold_boot_s,
        cold_boot_dps_requests=cold_dps,
        rss_mib=status.rss_mib,
        peak_rss_mib=status.peak_rss_kib / 1024,
        threads=status.threads,
        reprovision_s=reprovision_s,
        reprovision_dps_requests=reprovision_dps,
        reprovision_method_status=method_status,
        warm_boot_s=warm_boot_s,
        warm_boot_dps_requests=warm_dps,
        exit_codes=(first_exit, second_exit),
        cold_boot_dps_wait_s=cold_wait,
        reprovision_dps_wait_s=reprovision_wait,
    )


# -------------------------------------------------------------------------- backlog drain


@dataclass(frozen=True)
class BacklogDrain:
    """One hub outage and what the device did about it."""

    outage_s: float
    sampled_during_outage: int
    reconnect_s: float | None
    drain_s: float | None
    drained: bool
    lost: int
    duplicates: int

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def backlog_drain(
    cloud: BenchCloud,
    launcher: Launcher,
    spec: DeviceSpec,
    settings: BenchSettings,
    outage_s: float,
) -> BacklogDrain:
    """Take the device's hub away for ``outage_s``, bring it back, watch the backlog drain."""
    name = spec.name
    cloud.allocate_to("hub1")
    launcher.wipe_state(spec)
    since = cloud.client.last_sequence_number()
    with running(launcher, [spec]) as (device,):
        got = cloud.messages([name], since=since, count=3, timeout_s=settings.boot_timeout_s)[name]
        if len(got) < 3:
            raise BenchError(f"{name}: not connected before the outage\n{device.tail()}")
        hub = got[0].hub
        since = got[-1].sequence_number
        last_before = max(_sequence(m) for m in got)

        down_at = time.time()
        cloud.stop_hub(hub)
        threading.Event().wait(outage_s)  # the outage itself: a chosen duration
        up_at = time.time()
        cloud.start_hub(hub)

        def drained(found: Mapping[str, Sequence[Telemetry]]) -> bool:
            seen = {_sequence(m) for m in found[name]}
            newest = [_sequence(m) for m in found[name] if _body_time_s(m) > up_at]
            if not newest:
                return False
            return all(n in seen for n in range(last_before + 1, min(newest) + 1))

        after = cloud.messages(
            [name], since=since, timeout_s=settings.drain_timeout_s, until=drained
        )[name]
        stop_all([device])
    is_drained = drained({name: after})
    backlog = [m for m in after if down_at <= _body_time_s(m) <= up_at]
    sequences = [_sequence(m) for m in after]
    expected_top = max(sequences, default=last_before)
    lost = sum(1 for n in range(last_before + 1, expected_top + 1) if n not in set(sequences))
    arrivals_after_up = [enqueued_epoch_s(m) - up_at for m in after]
    return BacklogDrain(
        outage_s=up_at - down_at,
        sampled_during_outage=len({_sequence(m) for m in backlog}),
        reconnect_s=min(arrivals_after_up) if arrivals_after_up else None,
        drain_s=max(enqueued_epoch_s(m) - up_at for m in backlog) if backlog else None,
        drained=is_drained,
        lost=lost,
        duplicates=len(sequences) - len(set(sequences)),
    )


# --------------------------------------------------------------------------- reboot storm


@dataclass(frozen=True)
class StormPhase:
    """One simultaneous start of the whole fleet."""

    devices: int
    connected: int
    all_connected_s: float | None
    median_connected_s: float | None
    dps_requests: int
    dps_throttled: int
    ignored_retry_after: int
    exit_codes: tuple[int, ...]
    #: Each connected device's start -> first telemetry, sorted.
    connected_s: tuple[float, ...] = ()
    #: The machine's lowest MemAvailable during the phase (MiB): the fleet fitted.
    min_mem_available_mib: float | None = None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _storm_phase(
    cloud: BenchCloud, launcher: Launcher, specs: Sequence[DeviceSpec], settings: BenchSettings
) -> StormPhase:
    names = [s.name for s in specs]
    log = cloud.dps_log()
    since = cloud.client.last_sequence_number()
    phase_start = time.monotonic()
    started_at = time.time()
    low_water = _MemoryLowWater()
    overrides = Overrides(nice_increment=max(0, STORM_NICENESS - os.nice(0)))
    with low_water, running(launcher, specs, overrides) as processes:
        firsts = cloud.first_messages(names, since=since, timeout_s=settings.storm_timeout_s)
        codes = stop_all(processes)
    times = sorted(enqueued_epoch_s(m) - started_at for m in firsts.values())
    requests, throttled = log.count(names, since_s=phase_start)
    return StormPhase(
        devices=len(specs),
        connected=len(firsts),
        all_connected_s=times[-1] if len(times) == len(specs) else None,
        median_connected_s=times[len(times) // 2] if times else None,
        dps_requests=requests,
        dps_throttled=throttled,
        ignored_retry_after=log.early_retries(names, since_s=phase_start),
        exit_codes=tuple(codes),
        connected_s=tuple(round(t, 4) for t in times),
        min_mem_available_mib=low_water.lowest_mib,
    )


class _MemoryLowWater:
    """The machine's lowest ``MemAvailable`` while the block runs (sampled every 0.5 s)."""

    def __init__(self) -> None:
        self.lowest_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):  # a sampling period, not a wait for an event
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    mib = int(line.split()[1]) / 1024
                    if self.lowest_mib is None or mib < self.lowest_mib:
                        self.lowest_mib = mib

    def __enter__(self) -> _MemoryLowWater:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


def reboot_storm(
    cloud: BenchCloud, launcher: Launcher, specs: Sequence[DeviceSpec], settings: BenchSettings
) -> dict[str, StormPhase]:
    """First boot, warm restart, restart with wiped state — each with every device at once."""
    for spec in specs:
        launcher.wipe_state(spec)
    first = _storm_phase(cloud, launcher, specs, settings)
    warm = _storm_phase(cloud, launcher, specs, settings)
    for spec in specs:
        launcher.wipe_state(spec)
    cold = _storm_phase(cloud, launcher, specs, settings)
    return {"first_boot": first, "warm_restart": warm, "wiped_restart": cold}
