"""The telemetry log: every device-to-cloud message every hub received, in order.

One log is shared by all hubs. Each message gets the next sequence number (starting at
1), so a reader asks for "everything after N" and never misses or repeats a message.
Readers that want to wait do so on an :class:`asyncio.Condition` (long-poll), never in a
sleep loop. The log is bounded: the oldest messages are dropped past ``capacity``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping

from devcloud.model import TelemetryMessage


class TelemetryLog:
    """A bounded, ordered, awaitable log of :class:`TelemetryMessage`."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._messages: deque[TelemetryMessage] = deque(maxlen=capacity)
        self._last = 0
        self._changed: asyncio.Condition | None = None
        self._notifiers: set[asyncio.Task[None]] = set()

    @property
    def last_sequence_number(self) -> int:
        """The sequence number of the newest message (0 when none yet)."""
        return self._last

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def append(
        self,
        *,
        hub: str,
        device_id: str,
        enqueued_time: str,
        body: bytes,
        properties: Mapping[str, str],
        system_properties: Mapping[str, str],
    ) -> TelemetryMessage:
        """Store one message and wake the waiters. Call on the event loop thread."""
        self._last += 1
        message = TelemetryMessage(
            sequence_number=self._last,
            hub=hub,
            device_id=device_id,
            enqueued_time=enqueued_time,
            body=body,
            properties=dict(properties),
            system_properties=dict(system_properties),
        )
        self._messages.append(message)
        if self._changed is not None:
            changed = self._changed

            async def notify() -> None:
                async with changed:
                    changed.notify_all()

            task = asyncio.get_running_loop().create_task(notify())
            self._notifiers.add(task)
            task.add_done_callback(self._notifiers.discard)
        return message

    def since(
        self,
        after: int,
        *,
        device_id: str | None = None,
        hub: str | None = None,
        limit: int | None = None,
    ) -> list[TelemetryMessage]:
        """Messages with a sequence number above ``after``, oldest first, filtered."""
        found: list[TelemetryMessage] = []
        for message in self._messages:
            if message.sequence_number <= after:
                continue
            if device_id is not None and message.device_id != device_id:
                continue
            if hub is not None and message.hub != hub:
                continue
            found.append(message)
            if limit is not None and len(found) >= limit:
                break
        return found

    async def wait(
        self,
        after: int,
        timeout_s: float,
        *,
        device_id: str | None = None,
        hub: str | None = None,
        limit: int | None = None,
    ) -> list[TelemetryMessage]:
        """Like :meth:`since`, but wait up to ``timeout_s`` for at least one message."""
        condition = self._condition()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        async with condition:
            while True:
                found = self.since(after, device_id=device_id, hub=hub, limit=limit)
                remaining = deadline - loop.time()
                if found or remaining <= 0:
                    return found
                try:
                    await asyncio.wait_for(condition.wait(), remaining)
                except TimeoutError:
                    return self.since(after, device_id=device_id, hub=hub, limit=limit)
