"""How long each step of a two-step measurement holds its caller.

An event loop calls ``sensor.start()``, arms a timer for the seconds it returns,
and calls ``sensor.collect()`` when the timer fires; each call blocks the loop for
as long as its I2C transfers take, plus the chip's set-up (soft reset, calibration
or serial number) on the first call and after an error. The agent's goal is that no
call holds the loop longer than 20 ms (issue 11).

:func:`measure` times every ``start`` and ``collect`` over some rounds, the
conversions of one round overlapping as they would in the loop (all started, then
each collected when due). :func:`summarise` gives per sensor and call the count,
median, p99 and maximum, and :func:`histogram` counts calls per duration bucket.
:func:`measure_reference_backends` runs it in real time over the mock board and over
the real smbus backend on the i2c-stub-like adapter (:mod:`hal.sim.stub`); there the
bytes each call puts on the wire are counted too, so a bus time at 100 kHz can be
added (on a simulated board the transfers themselves are Python calls, much faster
than a real bus). ``python -m hal.stall`` prints the table. This is a measurement
for bench, never an assertion in a timed test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hal.exc import ConversionNotReady, HALError
from hal.sensor import Sensor

if TYPE_CHECKING:
    from hal.sim.stub import StubAdapter

#: The agent's budget for one call into a sensor from its loop.
STALL_BUDGET_S = 0.020
#: Standard-mode I2C: 9 clocks per byte (8 data bits and the ACK).
STANDARD_MODE_HZ = 100_000
#: Bucket edges of :func:`histogram`, in milliseconds.
HISTOGRAM_EDGES_MS: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
#: How many times one conversion may answer "not ready" before the round gives up on it.
MAX_NOT_READY = 10


@dataclass(frozen=True)
class CallTiming:
    """One call: which sensor, ``"start"`` or ``"collect"``, in which round, how long it
    blocked, how it ended (``"ok"``, ``"not-ready"`` or the error's class name) and,
    where counted, the bytes it moved on the bus (address bytes included)."""

    sensor: str
    call: str
    round: int
    duration_s: float
    outcome: str
    wire_bytes: int | None = None

    def bus_time_s(self, hz: int = STANDARD_MODE_HZ) -> float | None:
        """The time those bytes take on a real bus at ``hz`` (None if not counted)."""
        return None if self.wire_bytes is None else self.wire_bytes * 9 / hz


@dataclass(frozen=True)
class StallSummary:
    """Durations of one kind of call to one sensor, in seconds."""

    sensor: str
    call: str
    count: int
    p50_s: float
    p99_s: float
    max_s: float
    max_bus_time_s: float | None

    @property
    def worst_case_s(self) -> float:
        """The longest call plus the longest bus time of any call (an upper bound)."""
        return self.max_s + (self.max_bus_time_s or 0.0)


def measure(
    sensors: Sequence[Sensor],
    rounds: int = 20,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    timer: Callable[[], float] = time.perf_counter,
    wire_bytes: Callable[[], int] | None = None,
) -> list[CallTiming]:
    """Time every ``start`` and ``collect`` of ``rounds`` rounds over ``sensors``.

    ``wire_bytes``, if given, returns the bytes moved on the bus so far; each call is
    then annotated with its own. HAL errors are recorded as outcomes, not raised.
    """
    timings: list[CallTiming] = []

    def timed(sensor: Sensor, call: str, index: int) -> tuple[float | None, str]:
        before = wire_bytes() if wire_bytes else 0
        started = timer()
        wait: float | None = None
        outcome = "ok"
        try:
            if call == "start":
                wait = sensor.start()
            else:
                sensor.collect()
        except ConversionNotReady as exc:
            wait, outcome = exc.remaining_s, "not-ready"
        except HALError as exc:
            outcome = type(exc).__name__
        duration = timer() - started
        moved = wire_bytes() - before if wire_bytes else None
        timings.append(CallTiming(sensor.name, call, index, duration, outcome, moved))
        return wait, outcome

    for index in range(rounds):
        due: dict[int, float] = {}
        for i, sensor in enumerate(sensors):
            wait, _ = timed(sensor, "start", index)
            if wait is not None:
                due[i] = monotonic() + wait
        not_ready = dict.fromkeys(due, 0)
        while due:
            i = min(due, key=due.__getitem__)
            delay = due[i] - monotonic()
            if delay > 0:
                sleep(delay)
            wait, outcome = timed(sensors[i], "collect", index)
            if outcome == "not-ready" and wait is not None and not_ready[i] < MAX_NOT_READY:
                not_ready[i] += 1
                due[i] = monotonic() + wait
            else:
                del due[i]
    return timings


def summarise(timings: Sequence[CallTiming]) -> list[StallSummary]:
    """Per sensor and call kind: count, median, p99, maximum (in the order first seen)."""
    groups: dict[tuple[str, str], list[CallTiming]] = {}
    for timing in timings:
        groups.setdefault((timing.sensor, timing.call), []).append(timing)
    summaries = []
    for (sensor, call), group in groups.items():
        durations = sorted(t.duration_s for t in group)
        bus_times = [b for b in (t.bus_time_s() for t in group) if b is not None]
        summaries.append(
            StallSummary(
                sensor,
                call,
                len(durations),
                _quantile(durations, 0.5),
                _quantile(durations, 0.99),
                durations[-1],
                max(bus_times) if bus_times else None,
            )
        )
    return summaries


def histogram(
    timings: Sequence[CallTiming], edges_ms: Sequence[float] = HISTOGRAM_EDGES_MS
) -> list[tuple[str, int]]:
    """How many calls fall in each bucket: ``("< 0.1 ms", n)``, ..., ``(">= 50 ms", n)``."""
    counts = [0] * (len(edges_ms) + 1)
    for timing in timings:
        ms = timing.duration_s * 1000
        bucket = next((i for i, edge in enumerate(edges_ms) if ms < edge), len(edges_ms))
        counts[bucket] += 1
    labels = [f"< {edge:g} ms" for edge in edges_ms] + [f">= {edges_ms[-1]:g} ms"]
    return list(zip(labels, counts, strict=True))


def measure_reference_backends(
    rounds: int = 20, *, seed: int = 1, board: str = "default"
) -> dict[str, list[CallTiming]]:
    """:func:`measure` in real time over the mock board (``"mock"``) and over the smbus
    backend on the stub adapter (``"smbus-stub"``), every part of ``board``'s bus 1.

    Sensors are opened without set-up, so round 0's ``start`` includes each chip's
    set-up, as the loop's first sample (or the first after an error) would.
    """
    from hal.backend import MockBackend
    from hal.discovery import open_sensors
    from hal.sim.boards import build_board
    from hal.sim.stub import StubAdapter
    from hal.smbus_backend import SMBusBackend

    results: dict[str, list[CallTiming]] = {}
    mock = MockBackend(build_board(board, seed=seed))
    sensors = open_sensors(mock, "auto", [1], require_present=False)
    try:
        results["mock"] = measure(sensors, rounds)
    finally:
        for sensor in sensors:
            sensor.close()
    adapter = StubAdapter(build_board(board, seed=seed))
    smbus = SMBusBackend(smbus_class=adapter)
    try:
        sensors = open_sensors(smbus, "auto", [1], require_present=False)
        try:
            results["smbus-stub"] = measure(sensors, rounds, wire_bytes=_counter(adapter))
        finally:
            for sensor in sensors:
                sensor.close()
    finally:
        smbus.close()
    return results


def format_table(summaries: Sequence[StallSummary]) -> str:
    """A Markdown table of :func:`summarise`'s output, in milliseconds."""
    lines = [
        "| sensor | call | n | p50 ms | p99 ms | max ms | bus at 100 kHz, max ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        bus = "n/a" if s.max_bus_time_s is None else f"{s.max_bus_time_s * 1000:.2f}"
        lines.append(
            f"| {s.sensor} | {s.call} | {s.count} | {s.p50_s * 1000:.3f} | "
            f"{s.p99_s * 1000:.3f} | {s.max_s * 1000:.3f} | {bus} |"
        )
    return "\n".join(lines)


def main(rounds: int = 20) -> int:
    """Print the tables for both reference backends; exit 1 if any call broke the budget."""
    worst = 0.0
    for name, timings in measure_reference_backends(rounds).items():
        summaries = summarise(timings)
        print(f"## {name}: {rounds} rounds (round 0 includes set-up)\n")
        print(format_table(summaries))
        print()
        print(", ".join(f"{label}: {n}" for label, n in histogram(timings)))
        print()
        worst = max(worst, *(s.worst_case_s for s in summaries))
    print(f"worst call (with bus time where counted): {worst * 1000:.2f} ms")
    return 0 if worst <= STALL_BUDGET_S else 1


def _counter(adapter: StubAdapter) -> Callable[[], int]:
    """Bytes the adapter has moved so far (each message's address byte included)."""
    seen = 0
    total = 0

    def count() -> int:
        nonlocal seen, total
        for call in adapter.calls[seen:]:
            total += sum(len(data) + 1 for (_, _, data) in call)
        seen = len(adapter.calls)
        return total

    return count


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank quantile of an ordered, non-empty sequence."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


if __name__ == "__main__":
    raise SystemExit(main())
