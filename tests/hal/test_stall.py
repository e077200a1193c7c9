"""The stall measurement bench reuses (:mod:`hal.stall`): it counts what it says it counts.

Durations themselves are measured in bench, never asserted here.
"""

from __future__ import annotations

import pytest

from hal.backend import MockBackend
from hal.discovery import open_sensors, parse_spec
from hal.sim.boards import build_board
from hal.sim.clock import ManualClock
from hal.sim.stub import StubAdapter
from hal.smbus_backend import SMBusBackend
from hal.stall import (
    CallTiming,
    StallSummary,
    _counter,
    format_table,
    histogram,
    measure,
    measure_reference_backends,
    summarise,
)


def test_every_sensor_is_started_and_collected_once_per_round(
    backend: MockBackend, clock: ManualClock
) -> None:
    sensors = open_sensors(backend, "auto", [1])
    clock.sleeps.clear()
    timings = measure(sensors, 3, sleep=clock.sleep, monotonic=clock.monotonic)
    assert len(timings) == 3 * 2 * len(sensors)
    for index in range(3):
        for call in ("start", "collect"):
            names = [t.sensor for t in timings if t.round == index and t.call == call]
            assert sorted(names) == sorted(s.name for s in sensors)
    assert {t.outcome for t in timings} == {"ok"}
    # Conversions overlap: a round takes the longest wait (BH1750, 180 ms), not the sum.
    assert sum(clock.sleeps) == pytest.approx(3 * 0.180)


def test_errors_and_not_ready_are_outcomes(backend: MockBackend, clock: ManualClock) -> None:
    sensors = open_sensors(backend, [parse_spec("SHT3x@1:0x44"), parse_spec("TMP102@1:0x48")])
    backend.board.remove(1, 0x44)
    chip = backend.board.chip(1, 0x48)
    timings = measure(sensors, 1, sleep=clock.sleep, monotonic=clock.monotonic)
    by_sensor = {(t.sensor, t.call): t.outcome for t in timings}
    assert by_sensor[("sht3x@1:0x44", "start")] == "I2CError"
    assert ("sht3x@1:0x44", "collect") not in by_sensor
    assert by_sensor[("tmp102@1:0x48", "collect")] == "ok"
    assert chip.measurements >= 1  # type: ignore[attr-defined]


def test_wire_bytes_are_counted_per_call() -> None:
    # The smbus backend lives in real time, so the board does too (one 9.3 ms conversion).
    adapter = StubAdapter(build_board("default"))
    backend = SMBusBackend(smbus_class=adapter)
    (bme280,) = open_sensors(backend, [parse_spec("BME280@1:0x76")])

    timings = measure([bme280], 1, wire_bytes=_counter(adapter))
    start, collect = timings
    # start: ctrl_hum, config, ctrl_meas, each (address byte + register + value).
    assert start.wire_bytes == 3 * 3
    # collect: status (address, register; address, 1 byte), data (address, register;
    # address, 8 bytes).
    assert collect.wire_bytes == (2 + 2) + (2 + 9)
    assert start.bus_time_s() == pytest.approx(9 * 9 / 100_000)
    backend.close()


def test_summaries_quantiles_and_histogram() -> None:
    timings = [CallTiming("s", "start", i, (i + 1) / 1000, "ok") for i in range(100)]
    timings.append(CallTiming("s", "collect", 0, 0.00005, "ok", wire_bytes=10))
    start, collect = summarise(timings)
    assert (start.count, start.p50_s, start.p99_s, start.max_s) == (100, 0.050, 0.099, 0.100)
    assert start.max_bus_time_s is None
    assert collect.max_bus_time_s == pytest.approx(90 / 100_000)
    assert collect.worst_case_s == pytest.approx(0.00005 + 0.0009)
    buckets = dict(histogram(timings))
    assert buckets["< 0.1 ms"] == 1
    assert buckets["< 2 ms"] == 1  # 1 ms
    assert buckets["< 20 ms"] == 10  # 10..19 ms
    assert buckets[">= 50 ms"] == 51  # 50..100 ms
    assert sum(buckets.values()) == len(timings)
    table = format_table([start, collect])
    assert "| s | start | 100 | 50.000 | 99.000 | 100.000 | n/a |" in table
    assert isinstance(start, StallSummary)


def test_reference_backends_smoke() -> None:
    """One real-time round over both reference backends (about 0.4 s: two BH1750 waits)."""
    results = measure_reference_backends(1)
    assert set(results) == {"mock", "smbus-stub"}
    for timings in results.values():
        assert {t.call for t in timings} == {"start", "collect"}
        assert {t.outcome for t in timings} == {"ok"}
    assert all(t.wire_bytes for t in results["smbus-stub"])
    assert all(t.wire_bytes is None for t in results["mock"])
