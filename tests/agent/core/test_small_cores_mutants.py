"""Clock, reprovisioning budget, backoff and the lifecycle diagrams: the exact values
mutation testing found unpinned (issue #14)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.backoff import Backoff, BackoffPolicy, full_jitter
from agent.core.budget import CLOCK_SLACK_S, ReprovisionBudget
from agent.core.clock import (
    CLOCK_SET_AFTER_S,
    SystemClock,
    clock_unset,
    not_yet_valid_reason,
    utc_iso,
)
from agent.core.lifecycle import TABLE, State, render_dot, render_mermaid


def test_utc_iso_has_milliseconds_and_a_z() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(1_767_225_845.6789) == "2026-01-01T00:04:05.678Z"


def _iso_by_datetime(epoch_s: float) -> str:
    stamp = datetime.fromtimestamp(epoch_s, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=-1e10, max_value=1e11, allow_nan=False))
def test_utc_iso_is_datetimes_stamp_for_any_time(epoch_s: float) -> None:
    # The fast path (1970-2100) rounds microseconds half to even as datetime does.
    assert utc_iso(epoch_s) == _iso_by_datetime(epoch_s)


@pytest.mark.parametrize(
    "epoch_s",
    [0.0000005, 0.0000015, 0.0009995, 0.9999995, 0.9999994, 59.9999996, 4_102_444_799.9999996],
)
def test_utc_iso_rounds_microseconds_as_datetime_does(epoch_s: float) -> None:
    assert utc_iso(epoch_s) == _iso_by_datetime(epoch_s)


def test_the_system_clock_reads_the_real_clocks() -> None:
    clock = SystemClock()
    before_wall, before_mono = time.time(), time.monotonic()
    wall, mono = clock.time(), clock.monotonic()
    assert before_wall <= wall <= time.time()
    assert before_mono <= mono <= time.monotonic()


def test_a_clock_before_2025_is_unset() -> None:
    assert datetime(2025, 1, 1, tzinfo=UTC).timestamp() == CLOCK_SET_AFTER_S
    assert clock_unset(0.0) and clock_unset(CLOCK_SET_AFTER_S - 1)
    assert not clock_unset(CLOCK_SET_AFTER_S)


def test_not_yet_valid_names_the_unset_clock_or_asks_about_it() -> None:
    not_before = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    unset = not_yet_valid_reason(not_before, datetime(1970, 1, 1, tzinfo=UTC))
    assert unset == (
        "the certificate is not valid before 2026-03-04 and the system clock reads "
        "1970-01-01: the clock has not been set yet (no RTC, no NTP sync); no TLS until it is"
    )
    early = not_yet_valid_reason(not_before, datetime(2026, 3, 1, tzinfo=UTC))
    assert early == (
        "the certificate is not valid before 2026-03-04T05:06:07+00:00 "
        "(the clock reads 2026-03-01; is it right?)"
    )


def test_budget_limit_and_window_are_exact() -> None:
    budget = ReprovisionBudget(2, 100.0)
    assert budget.allows(0.0) and budget.next_allowed_at(5.0) == 5.0
    budget = budget.recorded(10.0).recorded(20.0)
    assert budget.attempts == (10.0, 20.0)
    assert not budget.allows(20.0)
    assert budget.next_allowed_at(30.0) == 110.0  # the older attempt leaves the window then
    assert not budget.allows(109.999)
    assert budget.allows(110.0)  # an attempt exactly window_s ago no longer counts
    assert budget.pruned(110.5).attempts == (20.0,)


def test_budget_keeps_only_the_attempts_that_matter() -> None:
    budget = ReprovisionBudget(2, 1000.0, (1.0, 2.0, 3.0, 4.0))
    assert budget.pruned(10.0).attempts == (3.0, 4.0)
    assert budget.next_allowed_at(10.0) == 1003.0


def test_budget_clamps_attempts_from_the_future() -> None:
    now = 5000.0
    budget = ReprovisionBudget(3, 600.0, (now + CLOCK_SLACK_S + 1, now + CLOCK_SLACK_S, 4500.0))
    # A time beyond the slack means the clock went back: it counts as now, for a full window.
    assert budget.pruned(now).attempts == (4500.0, now, now + CLOCK_SLACK_S)
    assert CLOCK_SLACK_S == 60.0


def test_a_budget_needs_a_limit_of_at_least_one() -> None:
    with pytest.raises(ValueError) as info:
        ReprovisionBudget(0, 60.0)
    assert str(info.value) == "a reprovisioning budget needs limit >= 1, got 0"


def test_backoff_ceiling_and_draws() -> None:
    policy = BackoffPolicy(0.5, 5.0)
    assert [policy.ceiling_s(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.ceiling_s(10_000) == 5.0  # no overflow
    rng, twin = random.Random(9), random.Random(9)
    assert full_jitter(policy, 2, rng) == twin.uniform(0.0, 2.0)


def test_backoff_counts_failures_and_honours_retry_after() -> None:
    backoff = Backoff(BackoffPolicy(1.0, 8.0), random.Random(4))
    twin = random.Random(4)
    assert backoff.next_delay_s() == twin.uniform(0.0, 1.0)
    assert backoff.next_delay_s() == twin.uniform(0.0, 2.0)
    assert backoff.next_delay_s(3.0) == 3.0 + twin.uniform(0.0, 1.0)
    assert backoff.attempt == 3
    assert backoff.next_delay_s(-1.0) == twin.uniform(0.0, 8.0)  # nonsense: ignored
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay_s() == twin.uniform(0.0, 1.0)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_policy_refuses_nonsense(base: float, cap: float) -> None:
    with pytest.raises(ValueError) as info:
        BackoffPolicy(base, cap)
    assert str(info.value) == f"need 0 < base_s <= cap_s, got {base}, {cap}"


def test_backoff_policy_with_base_equal_to_cap() -> None:
    assert BackoffPolicy(2.0, 2.0).ceiling_s(3) == 2.0


def test_the_diagrams_list_every_legal_transition_once() -> None:
    legal = {
        (state, target, kind.__name__)
        for (state, kind), rule in TABLE.items()
        if rule.kind == "go"
        for target in rule.targets
    }
    mermaid = render_mermaid().splitlines()
    assert mermaid[:2] == ["stateDiagram-v2", f"    [*] --> {State.STARTING.value}"]
    assert mermaid[-1] == f"    {State.STOPPING.value} --> [*]"
    assert render_mermaid().endswith("\n") and not render_mermaid().endswith("\n\n")
    edges = {f"    {s.value} --> {t.value}: {k}" for s, t, k in legal}
    assert set(mermaid[2:-1]) == edges and len(mermaid) == len(set(mermaid))
    dot = render_dot().splitlines()
    assert dot[:2] == ["digraph lifecycle {", "    rankdir=LR;"] and dot[-1] == "}"
    assert set(dot[2:-1]) == {f'    {s.value} -> {t.value} [label="{k}"];' for s, t, k in legal}
    assert render_dot().endswith("}\n")


def test_the_diagrams_of_another_table() -> None:
    from agent.core.lifecycle import Boot, Stop, go, ignore

    table = {
        (State.STARTING, Boot): go("boot", State.PROVISIONING),
        (State.STARTING, Stop): ignore("x"),
    }
    assert render_mermaid(table) == (
        "stateDiagram-v2\n"
        f"    [*] --> {State.STARTING.value}\n"
        f"    {State.STARTING.value} --> {State.PROVISIONING.value}: Boot\n"
        f"    {State.STOPPING.value} --> [*]\n"
    )
    assert render_dot(table) == (
        "digraph lifecycle {\n    rankdir=LR;\n"
        f'    {State.STARTING.value} -> {State.PROVISIONING.value} [label="Boot"];\n'
        "}\n"
    )
