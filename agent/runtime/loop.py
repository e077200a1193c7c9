"""The main loop: one thread, one open connection, named timers, a hand-in queue.

Theory of operation
-------------------
:class:`MainLoop` owns the loop and nothing else; what to do with a due timer, a
handed-in event or a transport event is the caller's (the daemon's timer handler and
the :class:`~agent.runtime.executor.Executor`). One :meth:`MainLoop.step`:

1. take over events handed in from other threads or signal handlers (SIGTERM, the
   reprovision button) through a queue, and fire due :class:`Timers`;
2. ``transport.poll()`` on the one open MQTT connection (DPS *or* hub), bounded by the
   next timer, or just wait on a self-pipe when there is no connection;
3. route each transport event to the caller;
4. ping the watchdog (sd_notify ``WATCHDOG``) at half its interval, from here only,
   so a stuck loop stops the pings.

:meth:`MainLoop.run` repeats steps until the caller says it is stopping. The longest
single wait is :data:`MAX_WAIT_S`, so shutdown and the watchdog stay prompt.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from agent.core.clock import Clock
from agent.runtime.sdnotify import Notifier

if TYPE_CHECKING:
    from agent.runtime.endpoint import TransportEvent
    from agent.runtime.transport import MqttTransport

#: Longest single wait of the main loop (keeps shutdown and watchdog prompt).
MAX_WAIT_S = 0.5

E = TypeVar("E")


class Timers:
    """Named one-shot timers on the injected monotonic clock.

    Starting a timer of a name that is already running replaces it.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._due: dict[str, float] = {}

    def start(self, name: str, delay_s: float) -> None:
        """Fire ``name`` after ``delay_s`` (negative: at once)."""
        self._due[name] = self._clock.monotonic() + max(0.0, delay_s)

    def cancel(self, name: str) -> None:
        """Forget ``name`` if it is running."""
        self._due.pop(name, None)

    def cancel_prefixed(self, prefixes: tuple[str, ...]) -> None:
        """Forget every timer whose name starts with one of ``prefixes``."""
        for name in [n for n in self._due if n.startswith(prefixes)]:
            del self._due[name]

    def __contains__(self, name: object) -> bool:
        return name in self._due

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._due))

    def __len__(self) -> int:
        return len(self._due)

    def seconds_to_next(self) -> float | None:
        """Seconds until the earliest timer is due (<= 0: due now); None if none runs."""
        if not self._due:
            return None
        return min(self._due.values()) - self._clock.monotonic()

    def pop_due(self) -> str | None:
        """The earliest timer that is due now, removed; None if none is due."""
        now = self._clock.monotonic()
        due = [(t, name) for name, t in self._due.items() if t <= now]
        if not due:
            return None
        _, name = min(due)
        del self._due[name]
        return name


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
    ) -> None:
        self._clock = clock
        self.timers = timers
        self._notifier = notifier
        self._on_timer = on_timer
        self._on_event = on_event
        self._transport = transport
        self._route = route
        self._handoff: queue.SimpleQueue[E] = queue.SimpleQueue()
        # Self-pipe: a signal handler or another thread wakes an idle loop without locks.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._watchdog_s = notifier.watchdog_interval_s()
        self._last_watchdog = 0.0

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

    def step(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """One round: hand-ins, due timers, then poll (or wait) once; the watchdog."""
        self._drain_handoff()
        self._fire_timers()
        if stopping():
            return
        wait = self._wait_s()
        transport = self._transport()
        if transport is not None:
            for event in transport.poll(wait):
                self._route(transport, event)
        else:
            self._idle(wait)
        now = self._clock.monotonic()
        if self._watchdog_s is not None and now - self._last_watchdog >= self._watchdog_s / 2:
            self._notifier.watchdog()
            self._last_watchdog = now

    def close(self) -> None:
        """Close the self-pipe."""
        self._wake_r.close()
        self._wake_w.close()

    def _idle(self, wait_s: float) -> None:
        """Wait with no connection open, until a timer is due or something is handed in."""
        try:
            readable, _, _ = select.select([self._wake_r], [], [], wait_s)
        except (OSError, ValueError):
            return
        if readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    def _wait_s(self) -> float:
        if not self._handoff.empty():
            return 0.0
        due = self.timers.seconds_to_next()
        if due is None:
            return MAX_WAIT_S
        return max(0.0, min(MAX_WAIT_S, due))

    def _drain_handoff(self) -> None:
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
