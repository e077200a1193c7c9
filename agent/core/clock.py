"""Time as the sans-I/O cores see it: an injected :class:`Clock`, and ISO stamps.

The cores never read the system clock themselves; they are handed a :class:`Clock`
(the runtime passes :class:`SystemClock`, tests a fake), so tests never patch
``datetime`` or sleep.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Time as the cores see it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for timers, backoff, outage length)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for what is persisted or reported)."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """:func:`time.time`."""
        return time.time()


def utc_iso(epoch_s: float) -> str:
    """``2026-01-02T03:04:05.678Z`` for an epoch time."""
    stamp = datetime.fromtimestamp(epoch_s, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
