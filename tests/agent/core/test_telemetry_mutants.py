"""Telemetry and direct-method details mutation testing found unpinned (issue #14)."""

from __future__ import annotations

import json

import pytest

from agent.core import methods, wire
from agent.core.actions import Publish
from agent.core.telemetry import (
    MemoryQueue,
    Publisher,
    Sample,
    TelemetryMessage,
    build_message,
    decode_body,
)


def message(n: int) -> TelemetryMessage:
    return build_message(
        sequence=n, timestamp_s=1.8e9 + n, sample=Sample({}, {}), message_id=f"m{n}"
    )


def test_the_body_names_units_and_errors() -> None:
    built = build_message(
        sequence=4,
        timestamp_s=0.0,
        sample=Sample({"s": {"temperature_c": 1.5, "mystery": 2.0}}, {"t": "I2CError: gone"}),
        message_id="id-4",
    )
    assert decode_body(built.body) == {
        "timestamp": "1970-01-01T00:00:00.000Z",
        "sequence": 4,
        "readings": {
            "s": {
                "temperature_c": {"value": 1.5, "unit": "degC"},
                "mystery": {"value": 2.0, "unit": ""},
            }
        },
        "errors": {"t": "I2CError: gone"},
    }
    assert built.properties == {"$.ct": "application/json", "$.ce": "utf-8", "$.mid": "id-4"}
    assert (built.message_id, built.sequence) == ("id-4", 4)


def test_decode_body_refuses_what_is_not_an_object() -> None:
    with pytest.raises(ValueError) as info:
        decode_body(b"[1]")
    assert str(info.value) == "telemetry body is not a JSON object"


def test_a_queue_needs_room_for_one() -> None:
    with pytest.raises(ValueError) as info:
        MemoryQueue(0)
    assert str(info.value) == "max_messages must be at least 1"
    assert len(MemoryQueue(1)) == 0


def test_a_full_queue_drops_the_oldest_even_in_flight() -> None:
    queue = MemoryQueue(2)
    queue.append(message(1))
    queue.append(message(2))
    assert [m.message_id for m in queue.take(1)] == ["m1"]
    queue.append(message(3))  # m1, in flight, is the oldest: dropped
    assert queue.dropped == 1 and len(queue) == 2
    assert queue.release_in_flight() == 0  # m1 is not in flight any more: it is gone
    assert [m.message_id for m in queue.take(5)] == ["m2", "m3"]
    assert queue.ack("m1") is False
    assert queue.ack("m2") is True and len(queue) == 1


def test_take_marks_what_it_returns_and_skips_what_is_in_flight() -> None:
    queue = MemoryQueue(5)
    for n in range(4):
        queue.append(message(n))
    assert [m.message_id for m in queue.take(2)] == ["m0", "m1"]
    assert [m.message_id for m in queue.take(2)] == ["m2", "m3"]
    assert queue.take(2) == []
    assert queue.release_in_flight() == 4


def test_publisher_window_of_one() -> None:
    queue = MemoryQueue(5)
    for n in range(3):
        queue.append(message(n))
    publisher = Publisher(queue, max_in_flight=1)
    assert publisher.pump() == []  # not connected
    assert not publisher.connected
    publisher.connect("dev")
    assert publisher.connected
    (first,) = publisher.pump()
    topic, body = wire.format_telemetry("dev", message(0).body, message(0).properties)
    assert first == Publish(topic, body, 1, tag="m0")
    assert publisher.pump() == []  # the window is full
    publisher.sent("m0", 11)
    assert publisher.acked(11) is True
    assert (publisher.acked_total, publisher.last_acked_sequence) == (1, 0)
    (second,) = publisher.pump()
    publisher.sent(second.tag or "", 12)
    assert publisher.acked(12)
    assert (publisher.acked_total, publisher.last_acked_sequence) == (2, 1)
    assert publisher.acked(12) is False  # once


def test_publisher_starts_with_nothing_acknowledged() -> None:
    publisher = Publisher(MemoryQueue(1), max_in_flight=2)
    assert (publisher.acked_total, publisher.last_acked_sequence, publisher.device_id) == (
        0,
        None,
        None,
    )


def test_a_disconnect_puts_in_flight_messages_back() -> None:
    queue = MemoryQueue(5)
    queue.append(message(1))
    publisher = Publisher(queue, max_in_flight=3)
    publisher.connect("dev")
    publisher.pump()
    publisher.sent("m1", 7)
    assert publisher.disconnect() == 1
    assert not publisher.connected and publisher.device_id is None
    assert publisher.acked(7) is False  # the old connection's mids mean nothing now
    publisher.connect("dev")
    assert [p.tag for p in publisher.pump()] == ["m1"]


def test_a_puback_for_a_message_the_publisher_never_pumped_does_not_raise() -> None:
    queue = MemoryQueue(5)
    queue.append(message(1))
    publisher = Publisher(queue, max_in_flight=3)
    publisher.connect("dev")
    publisher.sent("m1", 5)  # e.g. a late mid after a reconnect
    assert publisher.acked(5) is True
    assert publisher.last_acked_sequence is None and publisher.acked_total == 1


def test_a_malformed_method_payload_reply() -> None:
    reply = methods.malformed("bad bytes")
    assert reply == methods.MethodReply(400, {"message": "payload is not JSON: bad bytes"})


@pytest.mark.parametrize(
    ("name", "payload", "status", "body"),
    [
        ("reprovision", None, 202, {"message": "reprovisioning", "force": False}),
        ("reprovision", {"force": True}, 202, {"message": "reprovisioning", "force": True}),
        ("reprovision", {"x": 1}, 400,
         {"message": "reprovision: unknown field(s) ['x']; only 'force' is allowed"}),
        ("reprovision", {"force": 1}, 400,
         {"message": "reprovision: 'force' must be true or false, got 1"}),
        ("reprovision", [1], 400,
         {"message": "reprovision: payload must be a JSON object, got list"}),
        ("getStatus", "x", 400, {"message": "getStatus: payload must be a JSON object, got str"}),
        ("setTelemetryInterval", {"seconds": 2.5}, 200, {"telemetryIntervalSeconds": 2.5}),
        ("setTelemetryInterval", {"seconds": 86400}, 200, {"telemetryIntervalSeconds": 86400}),
        ("setTelemetryInterval", {"seconds": 1, "x": 2}, 400,
         {"message": 'setTelemetryInterval: payload must be {"seconds": n}'}),
        ("setTelemetryInterval", {"seconds": 0.5}, 400,
         {"message": "setTelemetryInterval: seconds must be between 1 and 86400 s, got 0.5"}),
        ("nope", None, 404,
         {"message": "unknown method 'nope'; known: getStatus, reprovision, setTelemetryInterval"}),
    ],
)  # fmt: skip
def test_method_answers(name: str, payload: object, status: int, body: object) -> None:
    reply = methods.dispatch(
        wire.MethodRequest(name, "1", payload), status=lambda: {"s": 1}, budget_allows=True
    )
    assert (reply.status, reply.payload) == (status, body)


def test_reprovision_within_and_beyond_the_budget() -> None:
    def call(payload: object, allows: bool) -> methods.MethodReply:
        return methods.dispatch(
            wire.MethodRequest("reprovision", "1", payload),
            status=dict,
            budget_allows=allows,
            budget_message="2 of 2 used",
        )

    declined = call({}, False)
    assert declined == methods.MethodReply(
        429, {"message": '2 of 2 used; pass {"force": true} to override'}
    )
    assert call({"force": True}, False).effect == methods.Reprovision(True)
    assert call({}, True).effect == methods.Reprovision(False)
    default = methods.dispatch(
        wire.MethodRequest("reprovision", "1", {}), status=dict, budget_allows=False
    )
    assert json.dumps(default.payload) == (
        '{"message": "reprovisioning budget spent; pass {\\"force\\": true} to override"}'
    )


def test_a_failing_status_callback_is_a_500_not_a_crash() -> None:
    def broken() -> dict[str, object]:
        raise KeyError("state")

    reply = methods.dispatch(
        wire.MethodRequest("getStatus", "1", None), status=broken, budget_allows=True
    )
    assert reply == methods.MethodReply(500, {"message": "getStatus failed: KeyError: 'state'"})


def test_set_interval_names_itself_when_the_payload_is_not_an_object() -> None:
    reply = methods.dispatch(
        wire.MethodRequest("setTelemetryInterval", "1", [5]), status=dict, budget_allows=True
    )
    assert reply.payload == {
        "message": "setTelemetryInterval: payload must be a JSON object, got list"
    }


class _Sensor:
    def __init__(self, name: str, values: dict[str, float] | None, error: Exception | None = None):
        self.name = name
        self.part = "X"
        self.quantities = tuple(values or ())
        self._values = values
        self._error = error

    def read(self) -> dict[str, float]:
        if self._error is not None:
            raise self._error
        assert self._values is not None
        return dict(self._values)


def test_one_step_sampling_carries_on_after_a_failure() -> None:
    from agent.core.telemetry import sample
    from hal.exc import I2CError

    sensors = [
        _Sensor("a", None, I2CError(121, 1, 0x76, "read 8")),
        _Sensor(
            "b", {"temperature_c": 1.0, "humidity_pct": float("nan"), "pressure_hpa": float("inf")}
        ),
        _Sensor("c", {"temperature_c": 2.0}),
        _Sensor("d", {"temperature_c": 3.0}),
    ]
    result = sample(sensors, disabled=frozenset({"d"}))  # type: ignore[arg-type]
    assert result.readings == {"b": {"temperature_c": 1.0}, "c": {"temperature_c": 2.0}}
    assert result.errors == {
        "a": "I2CError: i2c-1 0x76: read 8 failed: EREMOTEIO (Remote I/O error)",
        "b": "non-finite value for humidity_pct, pressure_hpa",
    }
