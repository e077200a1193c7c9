"""What devcloud saw happen, beyond its records: connections, last activity, DPS history.

Theory of operation. The registry holds what Azure persists (enrollments, devices,
twins, the last registration state). This module holds what Azure shows about a
device's *behaviour*, kept in memory since devcloud started:

* :class:`DeviceActivity` -- per hub and device: when it last sent anything
  (``lastActivityTime``) and when its connection state last changed
  (``connectionStateUpdatedTime``);
* :class:`DpsHistory` -- per registration id, the last :data:`HISTORY_LENGTH` things DPS
  did with its requests: accepted (202), assigned (hub, substatus), failed (allocation
  error) or refused (400/401/404/429 with the error code);
* :class:`ChangeFeed` -- a revision number bumped by every change anywhere (registry
  writes, activity, DPS history) that a reader can await. It carries no data: the web
  console's server-sent events only say "something changed", and the page reads the
  REST API again, so the REST API stays the one source of truth.

Everything runs on devcloud's event loop thread; nothing here blocks or does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: DPS events kept per registration id.
HISTORY_LENGTH = 50


class ChangeFeed:
    """A revision counter that readers can wait on (no data, just "changed")."""

    def __init__(self) -> None:
        self.revision = 0
        self._event: asyncio.Event | None = None

    def bump(self) -> None:
        """Record one change and wake every waiter. Call on the event loop thread."""
        self.revision += 1
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, after: int, timeout_s: float) -> int:
        """The revision once it is beyond ``after``, or the current one after ``timeout_s``."""
        if self.revision > after:
            return self.revision
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, timeout_s))
        return self.revision


def _no_change() -> None:
    """The default change hook: nobody listens."""


@dataclass(frozen=True)
class Seen:
    """One device's activity in one hub."""

    last_activity: str | None = None
    connection_state_updated: str | None = None


class DeviceActivity:
    """When each device last did something, and when it last connected or disconnected."""

    def __init__(self, clock: Callable[[], str]) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], Seen] = {}
        #: Called after every change (the app points it at :meth:`ChangeFeed.bump`).
        self.on_change: Callable[[], None] = _no_change

    def get(self, hub: str, device_id: str) -> Seen:
        """What is known of ``device_id`` in ``hub`` (all None if nothing yet)."""
        return self._seen.get((hub, device_id), Seen())

    def active(self, hub: str, device_id: str) -> None:
        """The device sent something (telemetry, a twin request, a method answer)."""
        old = self.get(hub, device_id)
        self._seen[hub, device_id] = Seen(self._clock(), old.connection_state_updated)
        self.on_change()

    def connection_changed(self, hub: str, device_id: str) -> None:
        """The device connected or disconnected (connecting counts as activity)."""
        now = self._clock()
        self._seen[hub, device_id] = Seen(now, now)
        self.on_change()

    def forget(self, hub: str, device_id: str) -> None:
        """The device was deleted from ``hub``."""
        if self._seen.pop((hub, device_id), None) is not None:
            self.on_change()


class DpsHistory:
    """The last DPS events of every registration id, oldest first."""

    def __init__(self, clock: Callable[[], str]) -> None:
        self._clock = clock
        self._events: dict[str, deque[dict[str, Any]]] = {}
        #: Called after every change (the app points it at :meth:`ChangeFeed.bump`).
        self.on_change: Callable[[], None] = _no_change

    def record(self, registration_id: str, event: str, status: int, **details: Any) -> None:
        """Append one event (``accepted``, ``assigned``, ``failed``, ``refused``)."""
        entry = {"timeUtc": self._clock(), "event": event, "status": status}
        entry.update({k: v for k, v in details.items() if v is not None})
        queue = self._events.setdefault(registration_id, deque(maxlen=HISTORY_LENGTH))
        queue.append(entry)
        self.on_change()

    def of(self, registration_id: str) -> list[dict[str, Any]]:
        """The events of ``registration_id``, oldest first (empty if none)."""
        return [dict(e) for e in self._events.get(registration_id, ())]
