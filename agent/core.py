"""Vocabulary shared by the sans-I/O cores: the injected clock and the I/O actions.

The cores (:mod:`agent.provisioning`, :mod:`agent.lifecycle`, :mod:`agent.session`)
never touch a socket, a timer or the system clock. They are handed a :class:`Clock`
and answer each event with a list of actions; the daemon carries the actions out.
Timers are named: starting a timer of a name that is already running replaces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Publish:
    """Send ``payload`` on ``topic`` over the current connection."""

    topic: str
    payload: bytes
    qos: int = 1
    #: Who wants the PUBACK (e.g. a telemetry message id); None if nobody.
    tag: str | None = None


@dataclass(frozen=True)
class Subscribe:
    """Subscribe the current connection to ``topic_filter``."""

    topic_filter: str
    qos: int = 1


@dataclass(frozen=True)
class StartTimer:
    """Fire a :class:`TimerFired` named ``name`` after ``delay_s`` (replaces a running one)."""

    name: str
    delay_s: float


@dataclass(frozen=True)
class CancelTimer:
    """Forget the timer ``name`` if it is running."""

    name: str
