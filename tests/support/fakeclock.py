"""A settable clock for the sans-I/O cores (no patching, no sleeping)."""

from __future__ import annotations


class FakeClock:
    """Monotonic and wall time that move only when told to."""

    def __init__(self, monotonic_s: float = 1000.0, wall_s: float = 1_800_000_000.0) -> None:
        self.monotonic_s = monotonic_s
        self.wall_s = wall_s

    def monotonic(self) -> float:
        return self.monotonic_s

    def time(self) -> float:
        return self.wall_s

    def advance(self, seconds: float) -> None:
        """Move both clocks forward together."""
        self.monotonic_s += seconds
        self.wall_s += seconds


class ShiftedClock:
    """The real clocks, with wall time shifted by ``offset_s`` (a device clock gone wrong).

    Monotonic time is the real one, so timers and sockets behave; only what the agent
    believes the date is moves. ``offset_s`` may be changed from another thread.
    """

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def monotonic(self) -> float:
        import time

        return time.monotonic()

    def time(self) -> float:
        import time

        return time.time() + self.offset_s
