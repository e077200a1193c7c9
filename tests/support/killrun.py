"""SIGKILL the real agent process at scripted random moments, then audit what devcloud got.

Theory of operation
-------------------
:class:`KillRun` runs several real ``python -m agent run`` processes against one
devcloud, each with its own device id, state directory and log, sampling fast (mock
HAL). One thread drives them all, round-robin, with no sleeps longer than a poll tick:

1. a slot without a process starts one and draws, from a seeded ``random.Random``,
   when to kill it: either *early* (a time after the spawn, so kills land in start-up,
   DPS registration, TLS and CONNECT) or *connected* (a time after the process wrote a
   ``CONNECTED`` status, so kills land between sampling, publishing and PUBACKs);
2. at that moment it gets SIGKILL; the harness reaps it, then audits the state
   directory as the next boot will find it: every JSON state file parses, no
   ``*.corrupt-*`` copy appeared (a copy means the agent itself found a file corrupt),
   and, when a ``snapshot`` function is given, records which messages the durable
   buffer holds (what was acknowledged to it and not yet to the hub);
3. when the trials are done (or the time budget is spent), every device runs once more
   until devcloud holds every message any snapshot held (bounded), then gets SIGTERM
   and must exit 0.

:meth:`KillRun.report` then reads devcloud's stored telemetry per device. A message is
identified by ``(sequence, timestamp)`` from its body (sequence numbers restart with
each process unless a durable buffer keeps them). *Lost* are messages a buffer snapshot
held that never reached devcloud: with a durable buffer that must be zero. *Duplicates*
are copies beyond the first. At-least-once allows two kinds: a message the buffer held
at a kill whose PUBACK (or its deletion) had not been committed is sent again after the
restart (``duplicates_from_buffer``); any other duplicate must have been in flight at a
kill or at a hub outage's drop, so at most ``(kills + outages * devices) *
max_in_flight`` of them.

With ``hub_proxies`` and ``outage_s=(period, down)`` the hubs (behind fault proxies)
reset every connection for ``down`` seconds of every ``period``, so kills also land in
outages, with a backlog in the buffer.

Every loop here is bounded by a count and by a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.agentcloud import Cloud, issue_device, write_config
from tests.support.faultproxy import FaultProxy

Key = tuple[int, str]
#: Reads a stopped agent's state directory: the buffered messages' keys, or None.
Snapshot = Callable[[Path], set[Key] | None]

DEVICE_AGENT = [sys.executable, "-m", "agent"]
STATE_JSON_FILES = ("state.json", "reprovision-budget.json", "status.json")
POLL_S = 0.005


def message_key(body: bytes) -> Key:
    """``(sequence, timestamp)`` of one telemetry body."""
    data = json.loads(body)
    return int(data["sequence"]), str(data["timestamp"])


@dataclass
class Slot:
    """One device: its config, its state directory, its current process."""

    device_id: str
    config: Path
    state_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0
    spawned_wall: float = 0.0
    connected_at: float | None = None
    kill_plan: tuple[str, float] = ("early", 0.0)
    kills: int = 0
    buffered: set[Key] = field(default_factory=set)
    #: Messages the buffer held, summed over kills (each may be sent again once).
    buffered_total: int = 0
    problems: list[str] = field(default_factory=list)

    def connected_since(self, since_wall: float) -> bool:
        """Whether this process wrote a CONNECTED status (after ``since_wall``)."""
        path = self.state_dir / "status.json"
        try:
            if path.stat().st_mtime < since_wall:
                return False
            return bool(json.loads(path.read_text()).get("state") == "CONNECTED")
        except (OSError, ValueError):
            return False


@dataclass(frozen=True)
class KillReport:
    """What devcloud stored, against what the kills allow."""

    trials: int
    kills_early: int
    kills_connected: int
    devices: int
    received: int
    distinct: int
    duplicates: int
    #: Duplicates of messages a buffer snapshot held (sent again after the restart).
    duplicates_from_buffer: int
    max_in_flight: int
    outages: int
    buffered_at_kills: int
    lost: int
    lost_examples: tuple[Key, ...]
    problems: tuple[str, ...]
    seconds: float
    finish_s: float

    @property
    def duplicate_bound(self) -> int:
        """At-least-once, beyond what the buffer held: only what was in flight at a kill
        or at an outage's drop (on each device) may come twice."""
        return (self.trials + self.outages * self.devices) * self.max_in_flight

    @property
    def other_duplicates(self) -> int:
        """Duplicates the buffer snapshots do not explain."""
        return self.duplicates - self.duplicates_from_buffer

    def summary(self) -> str:
        """One line for a failure message and the README figures."""
        return (
            f"{self.trials} SIGKILLs ({self.kills_early} early, {self.kills_connected} "
            f"connected) over {self.devices} devices in {self.seconds:.0f} s "
            f"({self.finish_s:.0f} s of it the final drain): "
            f"{self.outages} hub outages; {self.received} messages received, "
            f"{self.distinct} distinct, {self.duplicates} duplicates "
            f"({self.duplicates_from_buffer} re-sent from the buffer, {self.other_duplicates} "
            f"other, bound {self.duplicate_bound}); {self.buffered_at_kills} distinct messages "
            f"held by the buffer at kills, {self.lost} of them lost; "
            f"{len(self.problems)} problems"
        )


class KillRun:
    """Drive ``devices`` agents through SIGKILL trials; see the module docstring."""

    def __init__(
        self,
        cloud: Cloud,
        workdir: Path,
        *,
        seed: int,
        devices: int = 4,
        interval_s: float = 0.05,
        max_in_flight: int = 10,
        telemetry_extra: str = "",
        snapshot: Snapshot | None = None,
        early_s: tuple[float, float] = (0.0, 1.5),
        connected_s: tuple[float, float] = (0.0, 1.2),
        early_share: float = 0.3,
        pycache: Path | None = None,
        hub_proxies: tuple[FaultProxy, ...] = (),
        outage_s: tuple[float, float] | None = None,
    ) -> None:
        self.cloud = cloud
        self.rng = random.Random(seed)
        self.seed = seed
        self.max_in_flight = max_in_flight
        self.snapshot = snapshot
        self.early_s, self.connected_s, self.early_share = early_s, connected_s, early_share
        self.kills_early = self.kills_connected = 0
        #: (period, down): every ``period`` seconds the hubs refuse for ``down`` seconds.
        self.hub_proxies = hub_proxies
        self.outage_s = outage_s
        self.outages = 0
        self._hub_down = False
        self.env = {**os.environ, "NOTIFY_SOCKET": ""}
        if pycache is not None:
            # Real process starts, without recompiling every module each time: bytecode
            # goes to a cache of the test run's own, never into the source tree.
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(pycache)
        self.slots: list[Slot] = []
        for n in range(devices):
            device_id = f"dev-kill-{n}"
            base = workdir / device_id
            base.mkdir(parents=True)
            device = issue_device(cloud, device_id)
            write_config(
                base / "agent.toml",
                cloud,
                device,
                hub_port=hub_proxies[0].port if hub_proxies else None,
                state_dir=base / "state",
                interval_s=interval_s,
                # Every boot may register again if a kill lands before the state is
                # saved: the budget is not what this run tests.
                lifecycle={"reprovision_budget": 10_000, "connect_timeout_s": 5.0},
                extra="",
            )
            text = (base / "agent.toml").read_text()
            text = text.replace("max_in_flight = 10", f"max_in_flight = {max_in_flight}")
            text = text.replace('level = "DEBUG"', 'level = "INFO"')
            if telemetry_extra:
                # write_config names a buffer; the extra lines may name another.
                text = text.replace('buffer = "memory"\n', "", 1)
                text = text.replace("[telemetry]\n", f"[telemetry]\n{telemetry_extra}\n", 1)
            (base / "agent.toml").write_text(text)
            self.slots.append(Slot(device_id, base / "agent.toml", base / "state", base / "log"))
        self.trials = 0
        self.started = time.monotonic()
        #: How long :meth:`finish` took (drain and clean stop).
        self.finish_s = 0.0

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        with slot.log.open("ab") as log:
            log.write(f"--- start {slot.kills + 1}\n".encode())
            slot.proc = subprocess.Popen(
                [*DEVICE_AGENT, "--config", str(slot.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        slot.spawned_at = time.monotonic()
        slot.spawned_wall = time.time()
        if self.rng.random() < self.early_share:
            slot.kill_plan = ("early", self.rng.uniform(*self.early_s))
        else:
            slot.kill_plan = ("connected", self.rng.uniform(*self.connected_s))

    def _due(self, slot: Slot, now: float) -> bool:
        kind, after_s = slot.kill_plan
        if kind == "early":
            return now - slot.spawned_at >= after_s
        if slot.connected_at is None:
            if not slot.connected_since(slot.spawned_wall):
                # Never connecting is not a kill moment: give up waiting after a while.
                return now - slot.spawned_at >= 20.0
            slot.connected_at = now
        return now - slot.connected_at >= after_s

    def _kill(self, slot: Slot) -> None:
        proc = slot.proc
        assert proc is not None
        code = proc.poll()
        if code is not None:
            slot.problems.append(f"{slot.device_id} exited by itself with {code}")
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        kind, _ = slot.kill_plan
        if kind == "early":
            self.kills_early += 1
        else:
            self.kills_connected += 1
        slot.connected_at = None
        slot.proc = None
        slot.kills += 1
        self.trials += 1
        self._audit(slot)

    def _audit(self, slot: Slot) -> None:
        for name in STATE_JSON_FILES:
            path = slot.state_dir / name
            if not path.exists():
                continue
            try:
                json.loads(path.read_bytes())
            except ValueError as exc:
                slot.problems.append(f"{slot.device_id}: {name} corrupt after a kill: {exc}")
        if slot.state_dir.exists():
            for path in slot.state_dir.iterdir():
                if ".corrupt-" in path.name:
                    slot.problems.append(f"{slot.device_id}: the agent set aside {path.name}")
                    path.unlink()
        if self.snapshot is not None:
            held = self.snapshot(slot.state_dir)
            if held is not None:
                slot.buffered |= held
                slot.buffered_total += len(held)

    # -- the run ------------------------------------------------------------------------

    def run(self, trials: int, *, budget_s: float) -> None:
        """Kill until ``trials`` kills were made or ``budget_s`` passed."""
        deadline = self.started + budget_s
        for _ in range(int(budget_s / POLL_S) + 1000):
            now = time.monotonic()
            if self.trials >= trials or now >= deadline:
                break
            self._schedule_outage(now)
            for slot in self.slots:
                if self.trials >= trials:
                    break
                if slot.proc is None:
                    self._spawn(slot)
                elif self._due(slot, now) or slot.proc.poll() is not None:
                    self._kill(slot)
            time.sleep(POLL_S)

    def _schedule_outage(self, now: float) -> None:
        if self.outage_s is None or not self.hub_proxies:
            return
        period_s, down_s = self.outage_s
        down = (now - self.started) % period_s >= period_s - down_s
        if down and not self._hub_down:
            for proxy in self.hub_proxies:
                proxy.reset()  # drop what is open, refuse (RST) what comes
            self.outages += 1
        elif not down and self._hub_down:
            for proxy in self.hub_proxies:
                proxy.forward()
        self._hub_down = down

    def finish(self, *, drain_timeout_s: float = 60.0) -> None:
        """Run every device once more until devcloud has every buffered message; SIGTERM."""
        finish_started = time.monotonic()
        if self._hub_down:
            for proxy in self.hub_proxies:
                proxy.forward()
            self._hub_down = False
        for slot in self.slots:
            if slot.proc is None:
                self._spawn(slot)
        deadline = time.monotonic() + drain_timeout_s
        pending = list(self.slots)
        for _ in range(int(drain_timeout_s / 0.2) + 10):
            pending = [s for s in pending if not self._drained(s)]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        for slot in self.slots:
            proc = slot.proc
            assert proc is not None
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)
            if code != 0:
                slot.problems.append(f"{slot.device_id}: exit {code} after SIGTERM")
            slot.proc = None
            self._audit_files_only(slot)
        self.finish_s = time.monotonic() - finish_started

    def _audit_files_only(self, slot: Slot) -> None:
        snapshot, self.snapshot = self.snapshot, None
        try:
            self._audit(slot)
        finally:
            self.snapshot = snapshot

    def _drained(self, slot: Slot) -> bool:
        keys = set(self._keys(slot.device_id))
        return slot.buffered <= keys and slot.connected_since(slot.spawned_wall) and len(keys) > 0

    def _keys(self, device_id: str) -> Iterable[Key]:
        after = 0
        for _ in range(10_000):  # pages of 5000; bounded
            batch = self.cloud.client.telemetry(after, device_id=device_id, limit=5000)
            for message in batch:
                yield message_key(message.body)
            if len(batch) < 5000:
                return
            after = batch[-1].sequence_number

    def stop(self) -> None:
        """Kill whatever still runs (a failing test's clean-up)."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.proc.wait(10)
            slot.proc = None

    def report(self) -> KillReport:
        """Audit devcloud's stored telemetry against the kills."""
        received = distinct = buffered = from_buffer = 0
        lost: list[Key] = []
        for slot in self.slots:
            counts = Counter(self._keys(slot.device_id))
            received += sum(counts.values())
            distinct += len(counts)
            buffered += len(slot.buffered)
            lost += sorted(slot.buffered - set(counts))
            from_buffer += sum(n - 1 for key, n in counts.items() if key in slot.buffered)
        return KillReport(
            trials=self.trials,
            kills_early=self.kills_early,
            kills_connected=self.kills_connected,
            devices=len(self.slots),
            received=received,
            distinct=distinct,
            duplicates=received - distinct,
            duplicates_from_buffer=from_buffer,
            max_in_flight=self.max_in_flight,
            outages=self.outages,
            buffered_at_kills=buffered,
            lost=len(lost),
            lost_examples=tuple(lost[:5]),
            problems=tuple(p for s in self.slots for p in s.problems),
            seconds=time.monotonic() - self.started,
            finish_s=self.finish_s,
        )

    def log_tails(self, chars: int = 1500) -> str:
        """The end of every device's log, for a failure message."""
        return "\n".join(
            f"== {s.device_id}\n{s.log.read_text(errors='replace')[-chars:]}"
            for s in self.slots
            if s.log.exists()
        )


def sqlite_buffer_snapshot(state_dir: Path) -> set[Key] | None:
    """The keys of every message in the SQLite buffer(s) under ``state_dir``, or None.

    Schema-agnostic on purpose: any table with a ``body`` column holding telemetry JSON
    counts. Opened read-only, as SQLite's own recovery would read it after a crash.
    """
    import sqlite3

    files = [p for p in sorted(state_dir.glob("*")) if p.suffix in (".db", ".sqlite", ".sqlite3")]
    if not files:
        return None
    keys: set[Key] = set()
    for path in files:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            connection.execute("SELECT 1 FROM sqlite_master").fetchall()
        except sqlite3.OperationalError:
            # A read-only connection could not rebuild the WAL index: read it as the next
            # boot will (this may checkpoint the WAL; the data stays the same).
            connection.close()
            connection = sqlite3.connect(path, timeout=5)
        try:
            tables = [
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
                if "body" not in columns:
                    continue
                for (body,) in connection.execute(f'SELECT body FROM "{table}"'):  # noqa: S608
                    raw = body.encode() if isinstance(body, str) else bytes(body)
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        keys.add(message_key(raw))
        finally:
            connection.close()
    return keys
