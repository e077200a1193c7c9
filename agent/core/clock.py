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


#: :func:`utc_iso` formats times in [0, this) without ``datetime`` (the year 2100).
_FAST_UNTIL_S = 4_102_444_800.0


def utc_iso(epoch_s: float) -> str:
    """``2026-01-02T03:04:05.678Z`` for an epoch time (milliseconds truncated).

    Stamps every telemetry message, so the common range is formatted with
    :func:`time.gmtime` and microseconds rounded half to even exactly as
    :meth:`datetime.fromtimestamp` rounds them; other times go through ``datetime``.
    """
    if 0.0 <= epoch_s < _FAST_UNTIL_S:
        whole = int(epoch_s)
        micros = round((epoch_s - whole) * 1_000_000)
        if micros >= 1_000_000:
            whole, micros = whole + 1, micros - 1_000_000
        t = time.gmtime(whole)
        return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031 - the fastest here
            t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, micros // 1000
        )  # fmt: skip
    stamp = datetime.fromtimestamp(epoch_s, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: A wall clock earlier than this (2025-01-01T00:00:00Z) has not been set: a device with
#: no RTC boots at 1970 until NTP syncs. Nothing made by or for this agent predates it.
CLOCK_SET_AFTER_S = 1_735_689_600.0


def clock_unset(epoch_s: float) -> bool:
    """Whether a wall-clock reading is before :data:`CLOCK_SET_AFTER_S` (not set yet)."""
    return epoch_s < CLOCK_SET_AFTER_S


def not_yet_valid_reason(not_before: datetime, now: datetime) -> str:
    """Why a certificate is not valid yet at ``now``; the clock named when it is unset.

    The text names days, not seconds, so a re-check that fails the same way says the
    same thing (and is not logged again).
    """
    if clock_unset(now.timestamp()):
        return (
            f"the certificate is not valid before {not_before:%Y-%m-%d} and the system clock "
            f"reads {now:%Y-%m-%d}: the clock has not been set yet (no RTC, no NTP sync); "
            f"no TLS until it is"
        )
    return (
        f"the certificate is not valid before {not_before.isoformat()} "
        f"(the clock reads {now:%Y-%m-%d}; is it right?)"
    )
