"""Telemetry against the HAL's register-level mock board: messages, queue, PUBACK accounting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import hal
from agent.core import wire
from agent.core.telemetry import (
    MemoryQueue,
    Publisher,
    Sample,
    SampleRound,
    TelemetryMessage,
    build_message,
    decode_body,
    sample,
)
from hal.sim.clock import ManualClock

BME280 = "bme280@1:0x76"


@pytest.fixture
def board_and_sensors() -> Iterator[tuple[hal.MockBackend, list[hal.Sensor]]]:
    backend = hal.open_backend("mock", seed=3)
    assert isinstance(backend, hal.MockBackend)
    sensors = hal.open_sensors(backend, "auto", (1,))
    yield backend, sensors
    for sensor in sensors:
        sensor.close()
    backend.close()


def message(seq: int) -> TelemetryMessage:
    return build_message(
        sequence=seq, timestamp_s=1_800_000_000.0 + seq, sample=Sample({}, {}), message_id=f"m{seq}"
    )


def test_sample_reads_every_sensor_with_units(
    board_and_sensors: tuple[hal.MockBackend, list[hal.Sensor]],
) -> None:
    _, sensors = board_and_sensors
    result = sample(sensors)
    assert set(result.readings) == {s.name for s in sensors}
    assert result.errors == {}
    msg = build_message(sequence=7, timestamp_s=1_800_000_000.5, sample=result, message_id="abc")
    body = decode_body(msg.body)
    assert body["timestamp"] == "2027-01-15T08:00:00.500Z"
    assert body["sequence"] == 7
    readings = body["readings"]
    assert isinstance(readings, dict)
    temperature = readings[BME280]["temperature_c"]
    assert temperature["unit"] == "degC"
    assert -40 <= temperature["value"] <= 85
    assert readings[BME280]["pressure_hpa"]["unit"] == "hPa"
    assert msg.properties == {"$.ct": "application/json", "$.ce": "utf-8", "$.mid": "abc"}


def test_a_failing_sensor_is_reported_and_the_others_carry_on(
    board_and_sensors: tuple[hal.MockBackend, list[hal.Sensor]],
) -> None:
    backend, sensors = board_and_sensors
    backend.board.nack(1, 0x76)
    result = sample(sensors)
    assert BME280 in result.errors
    assert BME280 not in result.readings
    assert len(result.readings) == len(sensors) - 1
    backend.board.clear_faults()
    assert BME280 in sample(sensors).readings


def test_disabled_sensors_are_skipped(
    board_and_sensors: tuple[hal.MockBackend, list[hal.Sensor]],
) -> None:
    _, sensors = board_and_sensors
    result = sample(sensors, disabled=frozenset({BME280}))
    assert BME280 not in result.readings and BME280 not in result.errors


def test_queue_drops_oldest_when_full() -> None:
    queue = MemoryQueue(3)
    for seq in range(5):
        queue.append(message(seq))
    assert len(queue) == 3 and queue.dropped == 2
    assert [m.sequence for m in queue.take(10)] == [2, 3, 4]


def test_publisher_counts_only_on_puback_and_resends_after_reconnect() -> None:
    queue = MemoryQueue(100)
    publisher = Publisher(queue, max_in_flight=2)
    for seq in range(3):
        queue.append(message(seq))
    assert publisher.pump() == []  # not connected: nothing goes out
    publisher.connect("dev-1")
    first = publisher.pump()
    assert [p.tag for p in first] == ["m0", "m1"]  # max_in_flight
    decoded = wire.parse_telemetry(first[0].topic, first[0].payload)
    assert decoded.device_id == "dev-1" and decoded.properties["$.ct"] == "application/json"
    assert first[0].qos == 1
    assert publisher.pump() == []  # window full
    publisher.sent("m0", 10)
    publisher.sent("m1", 11)
    assert publisher.acked(10)
    assert publisher.acked_total == 1 and publisher.last_acked_sequence == 0
    assert not publisher.acked(999)  # not telemetry (e.g. a twin PATCH)
    # The connection drops with m1 unacknowledged: it is sent again after reconnect.
    assert publisher.disconnect() == 1
    publisher.connect("dev-1")
    again = publisher.pump()
    assert [p.tag for p in again] == ["m1", "m2"]
    assert len(queue) == 2


def test_ack_after_drop_is_harmless() -> None:
    queue = MemoryQueue(1)
    publisher = Publisher(queue, max_in_flight=5)
    publisher.connect("dev-1")
    queue.append(message(0))
    (pub,) = publisher.pump()
    publisher.sent(pub.tag or "", 1)
    queue.append(message(1))  # drops m0 while in flight
    assert publisher.acked(1)
    assert publisher.acked_total == 0
    assert [p.tag for p in publisher.pump()] == ["m1"]


def test_a_sample_round_overlaps_the_conversions_and_never_sleeps() -> None:
    clock = ManualClock()
    backend = hal.open_backend("mock", seed=3, clock=clock)
    sensors = hal.open_sensors(backend, "auto", (1,))
    try:
        assert len(sensors) >= 2
        durations = []
        for sensor in sensors:  # each conversion alone, to compare with
            alone = SampleRound([sensor])
            wait = alone.start(clock.monotonic())
            assert wait is not None
            durations.append(wait)
            clock.advance(wait)
            assert alone.collect(clock.monotonic()) is None
        clock.sleeps.clear()
        begun = clock.monotonic()
        round_ = SampleRound(sensors)
        first_wait = round_.start(begun)
        assert first_wait is not None and first_wait > 0
        # Collected as the loop's timer says: the wait is the latest conversion's end,
        # so one collection (one wakeup of the loop) takes every sensor.
        assert first_wait == pytest.approx(max(durations))
        clock.advance(first_wait)
        assert round_.collect(clock.monotonic()) is None
        assert round_.done
        taken = round_.result()
        assert set(taken.readings) == {s.name for s in sensors}, taken.errors
        assert taken.errors == {}
        # As long as the slowest conversion, not their sum; and no step slept.
        assert clock.monotonic() - begun == pytest.approx(max(durations))
        assert max(durations) < sum(durations)
        assert clock.sleeps == []
    finally:
        for sensor in sensors:
            sensor.close()
        backend.close()


def test_a_round_collected_early_asks_again_and_a_failing_sensor_is_an_error() -> None:
    clock = ManualClock()
    backend = hal.open_backend("mock", seed=3, clock=clock)
    sensors = hal.open_sensors(backend, "auto", (1,))
    try:
        round_ = SampleRound(sensors, disabled=frozenset({sensors[0].name}))
        now = clock.monotonic()
        wait = round_.start(now)
        assert wait is not None
        # Asked before anything is ready: nothing collected, the same wait again.
        assert round_.collect(now) == pytest.approx(wait)
        assert not round_.done
        clock.advance(1.0)
        assert round_.collect(clock.monotonic()) is None
        taken = round_.result()
        assert sensors[0].name not in taken.readings  # disabled
        assert set(taken.readings) == {s.name for s in sensors[1:]}
    finally:
        for sensor in sensors:
            sensor.close()
        backend.close()
    assert SampleRound([]).start(0.0) is None
