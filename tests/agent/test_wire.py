"""The DPS / IoT Hub codec: examples from the wire facts, round-trips, and garbage."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core import wire
from agent.errors import ProtocolError

# Text the cloud might put in ids: anything printable except the topic separators.
ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#"),
    min_size=1,
    max_size=40,
)
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_dps_username_matches_the_wire_facts() -> None:
    assert (
        wire.dps_username("0ne00000001", "dev-1", client_version="device-agent/0.1.0")
        == "0ne00000001/registrations/dev-1/"
        "api-version=2019-03-31&ClientVersion=device-agent%2F0.1.0"
    )


def test_hub_username_matches_the_wire_facts() -> None:
    assert (
        wire.hub_username("hub-a.example", "dev-1") == "hub-a.example/dev-1/?api-version=2021-04-12"
    )


def test_register_request_topic_and_body() -> None:
    topic, body = wire.format_dps_register("7", "dev-1", {"model": "m1"})
    assert topic == "$dps/registrations/PUT/iotdps-register/?$rid=7"
    assert json.loads(body) == {"registrationId": "dev-1", "payload": {"model": "m1"}}
    _, body = wire.format_dps_register("8", "dev-1", None)
    assert json.loads(body) == {"registrationId": "dev-1", "payload": None}


def test_poll_topic_carries_rid_and_operation_id() -> None:
    topic, body = wire.format_dps_poll("9", "4.abc.def")
    assert (
        topic == "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=9&operationId=4.abc.def"
    )
    assert body == b""


def test_dps_202_assigning_with_retry_after() -> None:
    resp = wire.parse_dps_response(
        "$dps/registrations/res/202/?$rid=1&retry-after=3",
        b'{"operationId":"op-1","status":"assigning"}',
    )
    assert resp == wire.DpsResponse(202, "1", 3.0, "op-1", "assigning")


def test_dps_200_assigned_decodes_registration_state() -> None:
    body = {
        "operationId": "op-1",
        "status": "assigned",
        "registrationState": {
            "registrationId": "dev-1",
            "assignedHub": "hub-a.local",
            "deviceId": "dev-1",
            "status": "assigned",
            "substatus": "initialAssignment",
            "etag": "e1",
            "createdDateTimeUtc": "2026-01-01T00:00:00Z",
            "lastUpdatedDateTimeUtc": "2026-01-01T00:00:01Z",
            "payload": {"x": 1},
        },
    }
    resp = wire.parse_dps_response("$dps/registrations/res/200/?$rid=2", json.dumps(body).encode())
    assert resp.status == 200 and resp.retry_after_s is None
    state = resp.registration_state
    assert state is not None
    assert (state.assigned_hub, state.device_id, state.substatus) == (
        "hub-a.local",
        "dev-1",
        "initialAssignment",
    )
    assert state.payload == {"x": 1}


def test_dps_error_body() -> None:
    resp = wire.parse_dps_response(
        "$dps/registrations/res/401/?$rid=3",
        b'{"errorCode":401002,"trackingId":"t","message":"unauthorized"}',
    )
    assert (resp.status, resp.error_code, resp.message) == (401, 401002, "unauthorized")


@pytest.mark.parametrize(
    ("topic", "payload", "problem"),
    [
        ("$dps/registrations/res/abc/?$rid=1", b"{}", "status"),
        ("$dps/registrations/res/200/?x=1", b"{}", "$rid"),
        ("$dps/registrations/res/200", b"{}", "query"),
        ("$dps/registrations/res/200/?$rid=1", b"[1]", "object"),
        ("$dps/registrations/res/200/?$rid=1", b"\xff", "JSON"),
        ("$dps/registrations/res/200/?$rid=1&retry-after=soon", b"{}", "retry-after"),
        ("$dps/registrations/res/200/?$rid=1", b'{"registrationState": 3}', "registrationState"),
        ("$dps/registrations/res/200/?$rid=1", b'{"status": 3}', "status"),
        ("$iothub/twin/res/200/?$rid=1", b"{}", "unexpected topic"),
    ],
)
def test_malformed_dps_responses_say_what_is_wrong(
    topic: str, payload: bytes, problem: str
) -> None:
    with pytest.raises(ProtocolError, match=problem.replace("$", r"\$")):
        wire.parse_dps_response(topic, payload)


@given(status=st.integers(100, 599), rid=ids, retry=st.none() | st.integers(0, 10_000), op=ids)
def test_dps_response_round_trip(status: int, rid: str, retry: int | None, op: str) -> None:
    topic, payload = wire.format_dps_response(
        status, rid, {"operationId": op, "status": "assigning"}, retry_after_s=retry
    )
    resp = wire.parse_dps_response(topic, payload)
    assert (resp.status, resp.rid, resp.operation_id) == (status, rid, op)
    assert resp.retry_after_s == (None if retry is None else float(retry))


@given(props=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=5))
def test_telemetry_property_bag_round_trip(props: dict[str, str]) -> None:
    topic, body = wire.format_telemetry("dev-1", b"{}", props)
    message = wire.parse_telemetry(topic, body)
    assert message.device_id == "dev-1"
    assert message.properties == props


def test_telemetry_topic_encodes_system_properties() -> None:
    topic, _ = wire.format_telemetry(
        "dev-1", b"{}", {"$.ct": "application/json", "$.ce": "utf-8", "$.mid": "m1"}
    )
    assert (
        topic == "devices/dev-1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=m1"
    )


def test_telemetry_refuses_oversized_bodies_and_bad_ids() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.format_telemetry("d", b"x" * (wire.MAX_MESSAGE_BYTES + 1), {})
    with pytest.raises(ProtocolError, match="device id"):
        wire.format_telemetry("a/b", b"{}", {})


def test_c2d_message() -> None:
    msg = wire.parse_c2d("devices/dev-1/messages/devicebound/%24.mid=7&k=v", b"hello")
    assert msg == wire.DeviceMessage("dev-1", {"$.mid": "7", "k": "v"}, b"hello")
    assert wire.c2d_filter("dev-1") == "devices/dev-1/messages/devicebound/#"


def test_twin_get_patch_and_responses() -> None:
    assert wire.format_twin_get("5") == ("$iothub/twin/GET/?$rid=5", b"")
    topic, body = wire.format_twin_patch_reported("6", {"a": 1})
    assert topic == "$iothub/twin/PATCH/properties/reported/?$rid=6"
    assert json.loads(body) == {"a": 1}
    resp = wire.parse_twin_response("$iothub/twin/res/204/?$rid=6&$version=12", b"")
    assert resp == wire.TwinResponse(204, "6", 12, None)
    resp = wire.parse_twin_response(
        "$iothub/twin/res/200/?$rid=5",
        b'{"desired":{"telemetryIntervalSeconds":5,"$version":3},"reported":{"$version":9}}',
    )
    doc = wire.parse_twin_document(resp.body)
    assert doc.desired_version == 3
    assert doc.desired["telemetryIntervalSeconds"] == 5


def test_desired_patch_version_from_topic() -> None:
    patch = wire.parse_desired_patch(
        "$iothub/twin/PATCH/properties/desired/?$version=4", b'{"telemetryIntervalSeconds":2}'
    )
    assert patch == wire.DesiredPatch(4, {"telemetryIntervalSeconds": 2})


@given(
    version=st.integers(0, 2**31),
    patch=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_desired_patch_round_trip(version: int, patch: dict[str, object]) -> None:
    topic, payload = wire.format_desired_patch(version, patch)
    decoded = wire.parse_desired_patch(topic, payload)
    assert decoded.version == version
    assert decoded.patch == patch


@given(name=ids, rid=ids, payload=json_values)
def test_method_request_round_trip(name: str, rid: str, payload: object) -> None:
    topic, body = wire.format_method_request(name, rid, payload)
    request = wire.parse_method_request(topic, body)
    assert request == wire.MethodRequest(name, rid, payload)


@given(rid=ids, status=st.integers(100, 999), payload=json_values)
def test_method_response_round_trip(rid: str, status: int, payload: object) -> None:
    topic, body = wire.format_method_response(rid, status, payload)
    assert wire.parse_method_response(topic, body) == wire.MethodResponse(status, rid, payload)


def test_method_request_with_bad_json_keeps_name_and_rid() -> None:
    with pytest.raises(wire.MalformedMethodPayload) as info:
        wire.parse_method_request("$iothub/methods/POST/getStatus/?$rid=9", b"{nope")
    assert (info.value.name, info.value.rid) == ("getStatus", "9")
    assert isinstance(info.value, ProtocolError)


def test_parse_hub_message_dispatches_by_topic() -> None:
    assert isinstance(
        wire.parse_hub_message("$iothub/twin/res/200/?$rid=1", b"{}"), wire.TwinResponse
    )
    assert isinstance(
        wire.parse_hub_message("$iothub/twin/PATCH/properties/desired/?$version=1", b"{}"),
        wire.DesiredPatch,
    )
    assert isinstance(
        wire.parse_hub_message("$iothub/methods/POST/x/?$rid=1", b"null"), wire.MethodRequest
    )
    assert isinstance(
        wire.parse_hub_message("devices/d/messages/devicebound/", b""), wire.DeviceMessage
    )
    with pytest.raises(ProtocolError, match="unexpected topic"):
        wire.parse_hub_message("$iothub/other", b"")


prefixes = st.sampled_from(
    [
        "",
        "$dps/registrations/res/",
        "$iothub/twin/res/",
        "$iothub/twin/PATCH/properties/desired/",
        "$iothub/methods/POST/",
        "devices/",
        "devices/d/messages/devicebound/",
    ]
)


@given(prefix=prefixes, rest=st.text(max_size=60), payload=st.binary(max_size=80))
def test_garbage_never_raises_anything_but_protocol_error(
    prefix: str, rest: str, payload: bytes
) -> None:
    topic = prefix + rest
    for parse in (wire.parse_dps_response, wire.parse_hub_message):
        with contextlib.suppress(ProtocolError):
            parse(topic, payload)


@given(prefix=prefixes, rest=st.text(max_size=30), payload=json_values)
def test_garbage_json_payloads_never_raise_anything_but_protocol_error(
    prefix: str, rest: str, payload: object
) -> None:
    body = json.dumps(payload).encode()
    for parse in (wire.parse_dps_response, wire.parse_hub_message):
        try:
            result = parse(prefix + rest, body)
        except ProtocolError:
            continue
        if isinstance(result, wire.TwinResponse):
            with contextlib.suppress(ProtocolError):
                wire.parse_twin_document(result.body)


def test_encode_json_refuses_nan() -> None:
    with pytest.raises(ProtocolError):
        wire.encode_json({"x": float("nan")})
