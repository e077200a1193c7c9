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
