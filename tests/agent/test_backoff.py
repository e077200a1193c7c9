"""Capped full-jitter backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.backoff import Backoff, BackoffPolicy, full_jitter


def test_ceiling_doubles_then_caps() -> None:
    policy = BackoffPolicy(base_s=1.0, cap_s=10.0)
    assert [policy.ceiling_s(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.ceiling_s(10_000) == 10.0


@given(seed=st.integers(0, 2**32), attempt=st.integers(0, 200))
def test_draws_stay_within_zero_and_the_ceiling(seed: int, attempt: int) -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=300.0)
    delay = full_jitter(policy, attempt, random.Random(seed))
    assert 0.0 <= delay <= policy.ceiling_s(attempt)


def test_draws_are_spread_not_constant() -> None:
    policy = BackoffPolicy(base_s=1.0, cap_s=100.0)
    rng = random.Random(1)
    draws = [full_jitter(policy, 5, rng) for _ in range(200)]
    # Full jitter covers the whole range: some small, some near the ceiling (32).
    assert min(draws) < 4.0
    assert max(draws) > 28.0


def test_same_seed_same_sequence() -> None:
    policy = BackoffPolicy(base_s=1.0, cap_s=100.0)
    a, b = Backoff(policy, random.Random(7)), Backoff(policy, random.Random(7))
    assert [a.next_delay_s() for _ in range(8)] == [b.next_delay_s() for _ in range(8)]


def test_attempts_count_and_reset() -> None:
    backoff = Backoff(BackoffPolicy(base_s=1.0, cap_s=1000.0), random.Random(3))
    for _ in range(4):
        backoff.next_delay_s()
    assert backoff.attempt == 4
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay_s() <= 1.0


@given(retry_after=st.floats(0, 3600), seed=st.integers(0, 1000))
def test_retry_after_is_honoured(retry_after: float, seed: int) -> None:
    backoff = Backoff(BackoffPolicy(base_s=0.5, cap_s=2.0), random.Random(seed))
    delay = backoff.next_delay_s(retry_after_s=retry_after)
    assert retry_after <= delay <= retry_after + 0.5


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="base_s"):
        BackoffPolicy(base_s=0.0, cap_s=1.0)
    with pytest.raises(ValueError, match="base_s"):
        BackoffPolicy(base_s=2.0, cap_s=1.0)
