"""Waiting for a condition in tests: poll against a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | bool | None],
    *,
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    for _ in range(int(timeout_s / interval_s) + 10):
        last = predicate()
        if last:
            return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
