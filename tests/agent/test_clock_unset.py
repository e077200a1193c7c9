"""A clock that was never set (1970 at boot) is named as such, in words that stay the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.core.clock import CLOCK_SET_AFTER_S, clock_unset, not_yet_valid_reason

NOT_BEFORE = datetime(2026, 12, 1, 7, 55, tzinfo=UTC)


def test_a_1970_reading_is_unset_and_a_2026_one_is_not() -> None:
    assert clock_unset(42.0)
    assert clock_unset(CLOCK_SET_AFTER_S - 1)
    assert not clock_unset(CLOCK_SET_AFTER_S)
    assert not clock_unset(NOT_BEFORE.timestamp())


def test_an_unset_clock_is_named_and_the_words_do_not_change_from_second_to_second() -> None:
    boot = datetime(1970, 1, 1, 0, 0, 42, tzinfo=UTC)
    first = not_yet_valid_reason(NOT_BEFORE, boot)
    assert "system clock reads 1970-01-01" in first and "no TLS" in first
    assert "not valid before 2026-12-01" in first
    assert not_yet_valid_reason(NOT_BEFORE, boot + timedelta(seconds=30)) == first


def test_a_set_clock_before_the_certificate_asks_whether_it_is_right() -> None:
    early = NOT_BEFORE - timedelta(days=2)
    reason = not_yet_valid_reason(NOT_BEFORE, early)
    assert "not valid before 2026-12-01T07:55:00+00:00" in reason
    assert "is it right?" in reason and "not been set" not in reason
