"""The reprovisioning budget: at most ``limit`` DPS registrations per sliding window.

Pure data. The lifecycle (:mod:`agent.core.lifecycle`) is handed a
:class:`ReprovisionBudget` and answers with ``PersistBudget`` actions; where it lives
on disk is :mod:`agent.store.state`'s business. Times are wall-clock seconds, so the
budget survives restarts. Clock jumps: a recorded time in the future (the clock went
back) is clamped to now, so it still counts for a full window; a jump forward can
only make attempts expire early, which is the lesser harm.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A recorded time further than this in the future means the clock went back.
CLOCK_SLACK_S = 60.0


@dataclass(frozen=True)
class ReprovisionBudget:
    """At most ``limit`` DPS registrations per sliding ``window_s`` (wall-clock times)."""

    limit: int
    window_s: float
    attempts: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # With no registration allowed at all, next_allowed_at would have no answer.
        if self.limit < 1:
            raise ValueError(f"a reprovisioning budget needs limit >= 1, got {self.limit}")

    def pruned(self, now_s: float) -> ReprovisionBudget:
        """Drop attempts outside the window; clamp future ones (clock went back) to now."""
        kept = sorted(
            min(t, now_s) if t > now_s + CLOCK_SLACK_S else t
            for t in self.attempts
            if t > now_s - self.window_s
        )
        return ReprovisionBudget(self.limit, self.window_s, tuple(kept[-self.limit :]))

    def allows(self, now_s: float) -> bool:
        """Whether a registration may start now."""
        return len(self.pruned(now_s).attempts) < self.limit

    def next_allowed_at(self, now_s: float) -> float:
        """The earliest wall-clock time a registration may start (``now_s`` if now)."""
        attempts = self.pruned(now_s).attempts
        if len(attempts) < self.limit:
            return now_s
        return attempts[len(attempts) - self.limit] + self.window_s

    def recorded(self, now_s: float) -> ReprovisionBudget:
        """This budget with one more registration at ``now_s``."""
        pruned = self.pruned(now_s)
        return ReprovisionBudget(self.limit, self.window_s, (*pruned.attempts, now_s))
