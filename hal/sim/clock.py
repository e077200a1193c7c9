"""Time for the simulation: the real clock, or a manual one tests advance.

Simulated chips timestamp measurements with ``clock.monotonic()``; drivers wait
with ``clock.sleep``. With :class:`ManualClock` a driver's wait advances simulated
time instantly and is recorded, so tests run fast and assert the waits requested.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class SimClock(Protocol):
    """What the simulation needs from time."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        ...


class RealClock:
    """Wall time: :func:`time.monotonic` and :func:`time.sleep`."""

    def monotonic(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        time.sleep(seconds)


class ManualClock:
    """Simulated time that moves only when told to; every ``sleep`` is recorded."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current simulated time."""
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        """Record the request and advance simulated time by it, without blocking."""
        if seconds < 0:
            raise ValueError("cannot sleep a negative time")
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    def advance(self, seconds: float) -> None:
        """Advance simulated time without recording a sleep."""
        with self._lock:
            self._now += seconds
