"""The main loop: one thread, one open connection, named timers, a hand-in queue.

Theory of operation
-------------------
:class:`MainLoop` owns the loop and nothing else; what to do with a due timer, a
handed-in event or a transport event is the caller's (the daemon's timer handler and
the :class:`~agent.runtime.executor.Executor`). One :meth:`MainLoop.step`:

1. take over events handed in from other threads or signal handlers (SIGTERM, the
   reprovision button) through a queue, and fire due :class:`Timers`; then the
   caller's ``before_wait`` (which may start or cancel timers: work that is due only
   while something is pending, such as the buffer's commit);
2. ``transport.poll()`` on the one open MQTT connection (DPS *or* hub), or just wait
   on a self-pipe when there is no connection, until the next deadline: the earliest
   timer or the watchdog's next ping. The transport adds its own (the connect timeout,
   MQTT keep-alive), so nothing wakes the loop on a fixed period;
3. route each transport event to the caller;
4. ping the watchdog (sd_notify ``WATCHDOG``) from here only, so a stuck loop stops
   the pings: due at half the watchdog interval, and sent early, on any wakeup after a
   quarter of it, so that it mostly rides on wakeups the loop has anyway.

The loop sleeps until something is due: a signal or another thread wakes it through
the self-pipe (and the transport's), a packet through the socket. A timer may carry a
*slack* (:meth:`Timers.start`): it fires on the first wakeup after it is due, and wakes
the loop itself only when the slack has run out too, so low-priority work (the periodic
``status.json`` refresh) joins wakeups that happen anyway.

:class:`LoopStats` measures what the loop is there to avoid: *stalls*, the time from a
wakeup until the loop waits on its socket again (routing, timers, sampling, files);
their histogram and maximum are in ``status.json``.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import queue
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from agent.core.clock import Clock
from agent.runtime.sdnotify import Notifier

if TYPE_CHECKING:
    from agent.runtime.endpoint import TransportEvent
    from agent.runtime.transport import MqttTransport

E = TypeVar("E")

#: Upper bounds (ms) of the stall histogram's buckets; the last one is open.
STALL_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 500)


class LoopStats:
    """Wakeups of the loop and its stalls (wakeup -> next wait), as a histogram.

    Measured with :func:`time.perf_counter`, not the injected clock: it is real time
    the socket went unserved, whatever clock the timers run on.
    """

    def __init__(self) -> None:
        self.wakeups = 0
        self.max_stall_s = 0.0
        self.counts = [0] * (len(STALL_BUCKETS_MS) + 1)
        self._woke_at: float | None = None

    def woke(self) -> None:
        """The loop returned from a wait."""
        self.wakeups += 1
        self._woke_at = time.perf_counter()

    def waiting(self) -> None:
        """The loop is about to wait again: the stall since :meth:`woke` is over."""
        if self._woke_at is None:
            return
        self.record(time.perf_counter() - self._woke_at)
        self._woke_at = None

    def record(self, stall_s: float) -> None:
        """Count one stall of ``stall_s`` seconds."""
        self.max_stall_s = max(self.max_stall_s, stall_s)
        # The first bucket whose bound exceeds the stall (the open one past the last).
        self.counts[bisect.bisect_right(STALL_BUCKETS_MS, stall_s * 1000)] += 1

    def as_json(self) -> dict[str, object]:
        """For ``status.json``: wakeups, the longest stall, the histogram (``"<5"``: ms)."""
        labels = [f"<{b:g}" for b in STALL_BUCKETS_MS] + [f">={STALL_BUCKETS_MS[-1]:g}"]
        return {
            "wakeups": self.wakeups,
            "maxStallMs": round(self.max_stall_s * 1000, 3),
            "stallsMs": dict(zip(labels, self.counts, strict=True)),
        }


class Timers:
    """Named one-shot timers on the injected monotonic clock.

    Starting a timer of a name that is already running replaces it. A timer with
    ``slack_s`` is due after ``delay_s`` but needs to wake the loop only after
    ``delay_s + slack_s``: it fires on the first wakeup in between.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._due: dict[str, float] = {}
        self._latest: dict[str, float] = {}

    def start(self, name: str, delay_s: float, *, slack_s: float = 0.0) -> None:
        """Fire ``name`` after ``delay_s`` (negative: at once), up to ``slack_s`` later."""
        due = self._clock.monotonic() + max(0.0, delay_s)
        self._due[name] = due
        self._latest[name] = due + max(0.0, slack_s)

    def cancel(self, name: str) -> None:
        """Forget ``name`` if it is running."""
        self._due.pop(name, None)
        self._latest.pop(name, None)

    def cancel_prefixed(self, prefixes: tuple[str, ...]) -> None:
        """Forget every timer whose name starts with one of ``prefixes``."""
        for name in [n for n in self._due if n.startswith(prefixes)]:
            self.cancel(name)

    def __contains__(self, name: object) -> bool:
        return name in self._due

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._due))

    def __len__(self) -> int:
        return len(self._due)

    def seconds_to_next(self) -> float | None:
        """Seconds until a timer must wake the loop (<= 0: now); None if none runs."""
        if not self._latest:
            return None
        return min(self._latest.values()) - self._clock.monotonic()

    def pop_due(self) -> str | None:
        """The earliest timer that is due now, removed; None if none is due."""
        now = self._clock.monotonic()
        earliest: tuple[float, str] | None = None
        for name, t in self._due.items():  # called on every wakeup: no list, no sort
            if t <= now and (earliest is None or (t, name) < earliest):
                earliest = (t, name)
        if earliest is None:
            return None
        self.cancel(earliest[1])
        return earliest[1]


class MainLoop(Generic[E]):
    """Drives timers, handed-in events and the open connection, one step at a time."""

    def __init__(
        self,
        *,
        clock: Clock,
        timers: Timers,
        notifier: Notifier,
        on_timer: Callable[[str], None],
        on_event: Callable[[E], None],
        transport: Callable[[], MqttTransport | None],
        route: Callable[[MqttTransport, TransportEvent], None],
        before_wait: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self.timers = timers
        self._notifier = notifier
        self._on_timer = on_timer
        self._on_event = on_event
        self._transport = transport
        self._route = route
        self._before_wait = before_wait
        self._handoff: queue.SimpleQueue[E] = queue.SimpleQueue()
        # Self-pipe: a signal handler or another thread wakes an idle loop without locks.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._watchdog_s = notifier.watchdog_interval_s()
        self._last_watchdog: float | None = None
        self.stats = LoopStats()

    def hand_in(self, event: E) -> None:
        """Queue ``event`` for the loop's thread and wake it (any thread, signal handlers)."""
        # SimpleQueue.put and a socket send only (no locks a signal could find held).
        self._handoff.put(event)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        transport = self._transport()
        if transport is not None:
            transport.wake()

    def run(self, stopping: Callable[[], bool]) -> None:
        """Step until ``stopping()`` says so."""
        while not stopping():
            self.step(stopping)

    def step(
        self, stopping: Callable[[], bool] = lambda: False, *, max_wait_s: float | None = None
    ) -> None:
        """One round: hand-ins, due timers, then poll (or wait) once; the watchdog.

        The wait lasts until the next deadline (or ``max_wait_s``, if shorter); with no
        timer, no watchdog and no bound it lasts until the socket or a hand-in wakes it.
        """
        self._ping_watchdog()
        self._drain_handoff()
        self._fire_timers()
        if stopping():
            self.stats.waiting()
            return
        if self._before_wait is not None:
            self._before_wait()
        wait = self.wait_s(max_wait_s)
        transport = self._transport()
        self.stats.waiting()
        if transport is not None:
            events = transport.poll(wait)
            self.stats.woke()
            for event in events:
                self._route(transport, event)
        else:
            self._idle(wait)
            self.stats.woke()

    def close(self) -> None:
        """Close the self-pipe."""
        self._wake_r.close()
        self._wake_w.close()

    def _ping_watchdog(self) -> None:
        """WATCHDOG on any wakeup a quarter interval after the last (due at half of it)."""
        if self._watchdog_s is None:
            return
        now = self._clock.monotonic()
        since = math.inf if self._last_watchdog is None else now - self._last_watchdog
        if since >= self._watchdog_s / 4:
            self._notifier.watchdog()
            self._last_watchdog = now

    def _idle(self, wait_s: float | None) -> None:
        """Wait with no connection open, until a timer is due or something is handed in."""
        try:
            readable, _, _ = select.select([self._wake_r], [], [], wait_s)
        except (OSError, ValueError):
            return
        if readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    def wait_s(self, max_wait_s: float | None = None) -> float | None:
        """How long the next wait lasts: to the next deadline (None: until woken)."""
        if not self._handoff.empty():
            return 0.0
        deadlines = [d for d in (self.timers.seconds_to_next(), max_wait_s) if d is not None]
        if self._watchdog_s is not None and self._last_watchdog is not None:
            deadlines.append(self._last_watchdog + self._watchdog_s / 2 - self._clock.monotonic())
        if not deadlines:
            return None
        return max(0.0, min(deadlines))

    def _drain_handoff(self) -> None:
        if self._handoff.empty():
            # Nothing handed in: no syscall. A wake byte still on its way is read by the
            # next idle wait (one early return) or stays unread while a transport is open.
            return
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        while True:
            try:
                event = self._handoff.get_nowait()
            except queue.Empty:
                return
            self._on_event(event)

    def _fire_timers(self) -> None:
        for _ in range(len(self.timers) + 1):
            name = self.timers.pop_due()
            if name is None:
                return
            self._on_timer(name)
