"""Capped full-jitter backoff, with randomness injected.

Theory of operation
-------------------
The n-th consecutive failure waits ``uniform(0, min(cap, base * 2**n))`` seconds
("full jitter"): the ceiling grows exponentially up to ``cap``, and the actual wait
is spread over the whole range so a fleet that lost its hub at the same moment does
not come back in lockstep. A server's ``retry-after`` is honoured when given: the
wait is then ``retry_after + uniform(0, base)`` -- never less than the server asked
for, still spread a little. :meth:`Backoff.reset` after a success. Waits that must
keep growing (``growing=True``: what follows a hub rejection) draw from the upper half,
``uniform(c/2, c)``, so a fleet still spreads but no device retries at once by chance.

The random source is a :class:`random.Random` passed in, so tests are deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """Parameters of capped full-jitter backoff (seconds)."""

    base_s: float
    cap_s: float

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.cap_s >= self.base_s):
            raise ValueError(f"need 0 < base_s <= cap_s, got {self.base_s}, {self.cap_s}")

    def ceiling_s(self, attempt: int) -> float:
        """The upper bound of the wait after ``attempt`` earlier failures (0-based)."""
        # Bound the exponent so 2**n never overflows a float.
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 64))


def full_jitter(policy: BackoffPolicy, attempt: int, rng: random.Random) -> float:
    """One draw of ``uniform(0, min(cap, base * 2**attempt))``."""
    return rng.uniform(0.0, policy.ceiling_s(attempt))


def growing_jitter(policy: BackoffPolicy, attempt: int, rng: random.Random) -> float:
    """One draw of ``uniform(c/2, c)`` with ``c = min(cap, base * 2**attempt)``.

    Unlike :func:`full_jitter` the wait never collapses towards 0: for waits that must
    grow (registrations after a hub rejection), still spread over half the range.
    """
    ceiling = policy.ceiling_s(attempt)
    return rng.uniform(ceiling / 2, ceiling)


class Backoff:
    """Counts consecutive failures and hands out the next wait."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random, *, growing: bool = False) -> None:
        self.policy = policy
        self._rng = rng
        #: :func:`growing_jitter` instead of :func:`full_jitter`.
        self.growing = growing
        self.attempt = 0

    def next_delay_s(self, retry_after_s: float | None = None) -> float:
        """The wait before the next try; counts one more failure."""
        if retry_after_s is not None and retry_after_s >= 0:
            delay = retry_after_s + self._rng.uniform(0.0, self.policy.base_s)
        elif self.growing:
            delay = growing_jitter(self.policy, self.attempt, self._rng)
        else:
            delay = full_jitter(self.policy, self.attempt, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Forget past failures (after a success)."""
        self.attempt = 0
