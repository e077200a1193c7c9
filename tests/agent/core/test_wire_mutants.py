"""Every ``raise ProtocolError`` of the wire codec, each with the input that reaches it
and the exact message (issue #14: half of them could become ``pass`` unnoticed); and
the values the codec gets exactly right at its edges."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.core import wire
from agent.core.wire.codec import _json_any, _json_object, _optional_object, _optional_str
from agent.errors import ProtocolError

DPS = "$dps/registrations/res/"
TWIN = "$iothub/twin/res/"
DESIRED = "$iothub/twin/PATCH/properties/desired/"
METHOD = "$iothub/methods/POST/"
FW = "\uff12\uff10\uff10"  # "200" in full-width digits: str.isdigit() says yes


def dps(query: str, body: bytes) -> object:
    return wire.parse_dps_response(f"{DPS}{query}", body)


CASES: list[tuple[str, Callable[[], object], str]] = [
    # DPS responses
    ("dps topic", lambda: wire.parse_dps_response("$dps/other/200/?$rid=1", b""),
     "DPS response: unexpected topic '$dps/other/200/?$rid=1'"),
    ("dps no query", lambda: wire.parse_dps_response(f"{DPS}200", b""),
     f"DPS response: topic '{DPS}200' has no '/?' query part"),
    ("dps bad query", lambda: wire.parse_dps_response(f"{DPS}200/?a", b""),
     f"DPS response: malformed query in topic '{DPS}200/?a'"),
    ("dps status", lambda: wire.parse_dps_response(f"{DPS}20x/?$rid=1", b""),
     f"DPS response: status '20x' in topic '{DPS}20x/?$rid=1' is not a 3-digit number"),
    ("dps 4-digit", lambda: wire.parse_dps_response(f"{DPS}2000/?$rid=1", b""),
     f"DPS response: status '2000' in topic '{DPS}2000/?$rid=1' is not a 3-digit number"),
    ("dps non-ascii digits", lambda: wire.parse_dps_response(f"{DPS}{FW}/?$rid=1", b""),
     f"DPS response: status '{FW}' in topic '{DPS}{FW}/?$rid=1' is not a 3-digit number"),
    ("dps no rid", lambda: wire.parse_dps_response(f"{DPS}200/?x=1", b""),
     f"DPS response: topic '{DPS}200/?x=1' has no $rid"),
    ("dps empty rid", lambda: wire.parse_dps_response(f"{DPS}200/?$rid=", b""),
     f"DPS response: topic '{DPS}200/?$rid=' has no $rid"),
    ("dps retry-after", lambda: wire.parse_dps_response(f"{DPS}429/?$rid=1&retry-after=-1", b""),
     f"DPS response: retry-after='-1' in topic '{DPS}429/?$rid=1&retry-after=-1' "
     "is not a whole number"),
    ("dps not json", lambda: wire.parse_dps_response(f"{DPS}200/?$rid=1", b"{"),
     "DPS response: payload is not UTF-8 JSON (Expecting property name enclosed in double "
     "quotes: line 1 column 2 (char 1))"),
    ("dps not object", lambda: wire.parse_dps_response(f"{DPS}200/?$rid=1", b"[1]"),
     "DPS response: payload is JSON list, expected an object"),
    ("dps state", lambda: wire.parse_dps_response(f"{DPS}200/?$rid=1", b'{"registrationState": 1}'),
     "DPS response: 'registrationState' is not an object"),
    ("dps errorCode", lambda: dps("400/?$rid=1", b'{"errorCode": "x"}'),
     "DPS response: 'errorCode' is str, not a number"),
    ("dps errorCode bool", lambda: dps("400/?$rid=1", b'{"errorCode": true}'),
     "DPS response: 'errorCode' is bool, not a number"),
    ("dps state errorCode",
     lambda: dps("200/?$rid=1", b'{"registrationState": {"errorCode": 1.5}}'),
     "DPS response registrationState: 'errorCode' is not a number"),
    ("dps state errorCode bool",
     lambda: dps("200/?$rid=1", b'{"registrationState": {"errorCode": false}}'),
     "DPS response registrationState: 'errorCode' is not a number"),
    ("dps operationId", lambda: wire.parse_dps_response(f"{DPS}202/?$rid=1", b'{"operationId": 5}'),
     "DPS response: 'operationId' is int, expected a string"),
    ("dps state hub", lambda: wire.parse_dps_response(
        f"{DPS}200/?$rid=1", b'{"registrationState": {"assignedHub": []}}'),
     "DPS response registrationState: 'assignedHub' is list, expected a string"),
    # twin responses and documents
    ("twin topic", lambda: wire.parse_twin_response("$iothub/twin/x/200/?$rid=1", b""),
     "twin response: unexpected topic '$iothub/twin/x/200/?$rid=1'"),
    ("twin status", lambda: wire.parse_twin_response(f"{TWIN}ok/?$rid=1", b""),
     f"twin response: status 'ok' in topic '{TWIN}ok/?$rid=1' is not a 3-digit number"),
    ("twin no rid", lambda: wire.parse_twin_response(f"{TWIN}200/?$version=1", b""),
     f"twin response: topic '{TWIN}200/?$version=1' has no $rid"),
    ("twin version", lambda: wire.parse_twin_response(f"{TWIN}204/?$rid=1&$version=x", b""),
     f"twin response: $version='x' in topic '{TWIN}204/?$rid=1&$version=x' is not a whole number"),
    ("twin body", lambda: wire.parse_twin_response(f"{TWIN}200/?$rid=1", b"\xff"),
     "twin response: payload is not UTF-8 JSON ('utf-8' codec can't decode byte 0xff in "
     "position 0: invalid start byte)"),
    ("twin document", lambda: wire.parse_twin_document([]),
     "twin document: body is list, expected an object"),
    ("twin desired", lambda: wire.parse_twin_document({"desired": 1}),
     "twin document: 'desired' is int, expected an object"),
    ("twin reported", lambda: wire.parse_twin_document({"reported": "x"}),
     "twin document: 'reported' is str, expected an object"),
    # desired patches
    ("desired topic", lambda: wire.parse_desired_patch("$iothub/twin/PATCH/x/?$version=1", b"{}"),
     "desired patch: unexpected topic '$iothub/twin/PATCH/x/?$version=1'"),
    ("desired path", lambda: wire.parse_desired_patch(f"{DESIRED}extra/?$version=1", b"{}"),
     f"desired patch: unexpected path '/extra' in topic '{DESIRED}extra/?$version=1'"),
    ("desired no query", lambda: wire.parse_desired_patch(DESIRED, b"{}"),
     f"desired patch: topic '{DESIRED}' has no '/?' query part"),
    ("desired body", lambda: wire.parse_desired_patch(f"{DESIRED}?$version=1", b"7"),
     "desired patch: payload is JSON int, expected an object"),
    ("desired version", lambda: wire.parse_desired_patch(f"{DESIRED}?$version=1.0", b"{}"),
     f"desired patch: $version='1.0' in topic '{DESIRED}?$version=1.0' is not a whole number"),
    # methods
    ("method topic", lambda: wire.parse_method_request("$iothub/methods/GET/x/?$rid=1", b""),
     "method request: unexpected topic '$iothub/methods/GET/x/?$rid=1'"),
    ("method name", lambda: wire.parse_method_request(f"{METHOD}/?$rid=1", b""),
     f"method request: bad method name '' in topic '{METHOD}/?$rid=1'"),
    ("method nested name", lambda: wire.parse_method_request(f"{METHOD}a/b/?$rid=1", b""),
     f"method request: bad method name 'a/b' in topic '{METHOD}a/b/?$rid=1'"),
    ("method no rid", lambda: wire.parse_method_request(f"{METHOD}reboot/?x=1", b""),
     f"method request: topic '{METHOD}reboot/?x=1' has no $rid"),
    ("method response status", lambda: wire.format_method_response("1", 99, None),
     "method response: status 99 is not a 3-digit code"),
    ("method response status high", lambda: wire.format_method_response("1", 1000, None),
     "method response: status 1000 is not a 3-digit code"),
    ("method response topic",
     lambda: wire.parse_method_response("$iothub/methods/req/200/?$rid=1", b""),
     "method response: unexpected topic '$iothub/methods/req/200/?$rid=1'"),
    # telemetry and property bags
    ("bag empty name", lambda: wire.encode_property_bag({"": "x"}),
     "property bag: empty property name"),
    ("bag value", lambda: wire.encode_property_bag({"k": 1}),  # type: ignore[dict-item]
     "property bag: value of 'k' is not a string"),
    ("bag malformed", lambda: wire.decode_property_bag("a=1&&b"),
     "property bag 'a=1&&b' is malformed"),
    ("telemetry id", lambda: wire.format_telemetry("a/b", b"{}", {}),
     "telemetry: device id 'a/b' cannot appear in a topic"),
    ("telemetry id empty", lambda: wire.format_telemetry("", b"{}", {}),
     "telemetry: device id '' cannot appear in a topic"),
    ("telemetry id plus", lambda: wire.format_telemetry("a+", b"{}", {}),
     "telemetry: device id 'a+' cannot appear in a topic"),
    ("telemetry id hash", lambda: wire.format_telemetry("a#", b"{}", {}),
     "telemetry: device id 'a#' cannot appear in a topic"),
    ("telemetry size", lambda: wire.format_telemetry("d", b"x" * (wire.MAX_MESSAGE_BYTES + 1), {}),
     f"telemetry: body of {wire.MAX_MESSAGE_BYTES + 1} bytes exceeds {wire.MAX_MESSAGE_BYTES}"),
    ("c2d topic", lambda: wire.parse_c2d("devices/d/messages/events/", b""),
     "devicebound message: unexpected topic 'devices/d/messages/events/'"),
    ("c2d short", lambda: wire.parse_c2d("devices/d/messages/devicebound", b""),
     "devicebound message: unexpected topic 'devices/d/messages/devicebound'"),
    ("c2d prefix", lambda: wire.parse_c2d("device/d/messages/devicebound/", b""),
     "devicebound message: unexpected topic 'device/d/messages/devicebound/'"),
    ("c2d messages", lambda: wire.parse_c2d("devices/d/message/devicebound/", b""),
     "devicebound message: unexpected topic 'devices/d/message/devicebound/'"),
    ("c2d empty id", lambda: wire.parse_c2d("devices//messages/devicebound/", b""),
     "devicebound message: empty device id in topic 'devices//messages/devicebound/'"),
    ("telemetry topic", lambda: wire.parse_telemetry("devices/d/messages/devicebound/", b""),
     "events message: unexpected topic 'devices/d/messages/devicebound/'"),
    ("hub topic", lambda: wire.parse_hub_message("elsewhere", b""),
     "hub message on unexpected topic 'elsewhere'"),
    ("encode nan", lambda: wire.encode_json(float("nan")),
     "cannot encode as JSON: Out of range float values are not JSON compliant"),
    ("encode object", lambda: wire.encode_json(object()),
     "cannot encode as JSON: Object of type object is not JSON serializable"),
    # helpers
    ("json any", lambda: _json_any(b"{", "x"),
     "x: payload is not UTF-8 JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1))"),
    ("json deep", lambda: _json_object(b"[" * 100_000 + b"]" * 100_000, "x"),
     "x: payload is not UTF-8 JSON (maximum recursion depth exceeded..."),
    ("optional str", lambda: _optional_str({"k": 1}, "k", "x"), "x: 'k' is int, expected a string"),
    ("optional object", lambda: _optional_object({"k": []}, "k", "x"),
     "x: 'k' is list, expected an object"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_protocol_error(label: str, call: Callable[[], object], message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        call()
    if message.endswith("..."):  # the rest is the json module's own wording
        assert str(info.value).startswith(message[:-3])
    else:
        assert str(info.value) == message


def test_a_method_request_with_a_bad_payload_still_names_the_call() -> None:
    with pytest.raises(wire.MalformedMethodPayload) as info:
        wire.parse_method_request(f"{METHOD}reboot/?$rid=9", b"{")
    assert (info.value.name, info.value.rid) == ("reboot", "9")
    assert info.value.problem.startswith("method request: payload is not UTF-8 JSON")
    assert str(info.value) == info.value.problem


def test_the_edges_that_are_accepted() -> None:
    ok = wire.parse_dps_response(f"{DPS}202/?$rid=1&retry-after=0", b"  ")
    assert (ok.status, ok.rid, ok.retry_after_s, ok.registration_state) == (202, "1", 0.0, None)
    blank = wire.parse_dps_response(f"{DPS}200/?$rid=1&retry-after=", b"")
    assert blank.retry_after_s is None
    assert wire.parse_dps_response(f"{DPS}200/?$rid=1", b"").operation_id is None
    assert wire.format_method_response("r", 100, None)[0] == "$iothub/methods/res/100/?$rid=r"
    assert wire.format_method_response("r", 999, None)[0] == "$iothub/methods/res/999/?$rid=r"
    assert wire.parse_twin_response(f"{TWIN}204/?$rid=2", b"").body is None
    assert wire.parse_twin_response(f"{TWIN}200/?$rid=2", b" \n").body is None
    assert wire.parse_twin_document({}).desired == {}
    assert wire.decode_property_bag("") == {}
    assert wire.decode_property_bag("a=&b=2") == {"a": "", "b": "2"}
    body = b"x" * wire.MAX_MESSAGE_BYTES
    assert wire.format_telemetry("d", body, {})[1] == body  # exactly the limit is fine


def test_desired_version_from_the_topic_or_else_the_body() -> None:
    from_topic = wire.parse_desired_patch(f"{DESIRED}?$version=7", b'{"$version": 3}')
    assert from_topic.version == 7
    from_body = wire.parse_desired_patch(f"{DESIRED}?x=1", b'{"$version": 3}')
    assert from_body.version == 3
    assert wire.parse_desired_patch(f"{DESIRED}?", b'{"$version": true}').version is None
    document = wire.parse_twin_document({"desired": {"$version": False}})
    assert document.desired_version is None
    assert wire.parse_twin_document({"desired": {"$version": 0}}).desired_version == 0


def test_the_hub_message_dispatch() -> None:
    assert isinstance(wire.parse_hub_message(f"{TWIN}200/?$rid=1", b"{}"), wire.TwinResponse)
    assert isinstance(wire.parse_hub_message(f"{DESIRED}?$version=1", b"{}"), wire.DesiredPatch)
    assert isinstance(wire.parse_hub_message(f"{METHOD}m/?$rid=1", b""), wire.MethodRequest)
    c2d = wire.parse_hub_message("devices/d/messages/devicebound/a=1", b"hi")
    assert c2d == wire.DeviceMessage("d", {"a": "1"}, b"hi")


def test_request_ids_are_escaped_completely_in_every_topic() -> None:
    rid = "a/b c"
    assert wire.format_dps_register(rid, "dev", None)[0].endswith("?$rid=a%2Fb%20c")
    assert wire.format_twin_get(rid)[0] == "$iothub/twin/GET/?$rid=a%2Fb%20c"
    assert wire.format_twin_patch_reported(rid, {})[0].endswith("/reported/?$rid=a%2Fb%20c")
    assert wire.format_method_request("m", rid, None)[0] == f"{METHOD}m/?$rid=a%2Fb%20c"
    assert (
        wire.format_method_response(rid, 200, None)[0] == "$iothub/methods/res/200/?$rid=a%2Fb%20c"
    )
    topic = wire.format_dps_poll("1/2", "op/3 4")[0]
    assert (
        topic
        == "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1%2F2&operationId=op%2F3%204"
    )


def test_the_register_body_and_a_full_registration_state() -> None:
    _, body = wire.format_dps_register("1", "dev-1", {"k": "v"})
    assert body == b'{"registrationId":"dev-1","payload":{"k":"v"}}'
    assert (
        wire.format_dps_register("1", "dev-1", {})[1]
        == b'{"registrationId":"dev-1","payload":null}'
    )
    state = {
        "registrationId": "dev-1", "status": "assigned", "assignedHub": "h", "deviceId": "d",
        "substatus": "initialAssignment", "etag": "e", "createdDateTimeUtc": "c",
        "lastUpdatedDateTimeUtc": "l", "payload": [1], "errorCode": 400207, "errorMessage": "m",
    }  # fmt: skip
    response = wire.parse_dps_response(
        f"{DPS}200/?$rid=1",
        wire.encode_json(
            {"status": "assigned", "registrationState": state, "errorCode": 5, "message": "x"}
        ),
    )
    assert response.registration_state == wire.RegistrationState(
        "dev-1", "assigned", "h", "d", "initialAssignment", "e", "c", "l", [1], 400207, "m"
    )
    assert (response.operation_status, response.error_code, response.message) == (
        "assigned",
        5,
        "x",
    )


@pytest.mark.parametrize(
    "key", ["registrationId", "status", "deviceId", "substatus", "etag", "createdDateTimeUtc",
            "lastUpdatedDateTimeUtc", "errorMessage"],
)  # fmt: skip
def test_each_registration_state_string_is_checked(key: str) -> None:
    body = wire.encode_json({"registrationState": {key: 1}})
    with pytest.raises(ProtocolError) as info:
        wire.parse_dps_response(f"{DPS}200/?$rid=1", body)
    assert str(info.value) == f"DPS response registrationState: {key!r} is int, expected a string"


def test_format_dps_response_round_trips() -> None:
    topic, body = wire.format_dps_response(429, "7", None, retry_after_s=3)
    assert (topic, body) == (f"{DPS}429/?$rid=7&retry-after=3", b"")
    assert wire.format_dps_response(200, "7", {"a": 1}) == (f"{DPS}200/?$rid=7", b'{"a":1}')


def test_property_bags_escape_everything_and_keep_slashes_in_c2d_topics() -> None:
    bag = wire.encode_property_bag({"$.ct": "application/json", "a b": "c d"})
    assert bag == "%24.ct=application%2Fjson&a%20b=c%20d"
    assert wire.decode_property_bag(bag) == {"$.ct": "application/json", "a b": "c d"}
    c2d = wire.parse_c2d("devices/d/messages/devicebound/to=/x/y&n=1", b"body")
    assert c2d == wire.DeviceMessage("d", {"to": "/x/y", "n": "1"}, b"body")
    assert wire.parse_telemetry("devices/d/messages/events/", b"t").body == b"t"


def test_twin_response_formatting() -> None:
    assert wire.format_twin_response(200, "1", None) == (f"{TWIN}200/?$rid=1", b"")
    assert wire.format_twin_response(200, "1", {}, version=3) == (
        f"{TWIN}200/?$rid=1&$version=3",
        b"{}",
    )
    response = wire.parse_twin_response(f"{TWIN}200/?$rid=1&$version=3", b'{"a": 1}')
    assert response == wire.TwinResponse(200, "1", 3, {"a": 1})
    assert wire.parse_twin_document({"desired": {"$version": "7"}}).desired_version is None


def test_method_response_parsing() -> None:
    response = wire.parse_method_response("$iothub/methods/res/404/?$rid=4", b'{"m": 1}')
    assert response == wire.MethodResponse(404, "4", {"m": 1})


def test_connect_usernames() -> None:
    assert wire.dps_username("0ne00ABC", "dev 1") == (
        f"0ne00ABC/registrations/dev 1/api-version={wire.DPS_API_VERSION}"
    )
    assert wire.dps_username("s", "d", api_version="2019-03-31", client_version="agent/1 x") == (
        "s/registrations/d/api-version=2019-03-31&ClientVersion=agent%2F1%20x"
    )
    assert wire.hub_username("h.example", "d") == f"h.example/d/?api-version={wire.HUB_API_VERSION}"
    assert wire.hub_username("h", "d", api_version="v", client_version="a/b c") == (
        "h/d/?api-version=v&DeviceClientType=a%2Fb%20c"
    )


def test_the_hub_username_announces_a_model() -> None:
    assert wire.hub_username("h", "d", api_version="v", model_id="dtmi:x:Y;1") == (
        "h/d/?api-version=v&model-id=dtmi%3Ax%3AY%3B1"
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: wire.parse_method_request(f"{METHOD}reboot", b""),
         f"method request: topic '{METHOD}reboot' has no '/?' query part"),
        (lambda: wire.parse_method_response("$iothub/methods/res/200", b""),
         "method response: topic '$iothub/methods/res/200' has no '/?' query part"),
        (lambda: wire.parse_method_response("$iothub/methods/res/2x0/?$rid=1", b""),
         "method response: status '2x0' in topic '$iothub/methods/res/2x0/?$rid=1' is not a "
         "3-digit number"),
        (lambda: wire.parse_method_response("$iothub/methods/res/200/?a=1", b""),
         "method response: topic '$iothub/methods/res/200/?a=1' has no $rid"),
        (lambda: wire.parse_method_response("$iothub/methods/res/200/?$rid=1", b"{"),
         "method response: payload is not UTF-8 JSON (Expecting property name enclosed in "
         "double quotes: line 1 column 2 (char 1))"),
    ],
)  # fmt: skip
def test_method_topic_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        call()
    assert str(info.value) == message


def test_the_query_starts_at_the_first_slash_question_mark() -> None:
    request = wire.parse_method_request(f"{METHOD}m/?$rid=a/?b", b"")
    assert (request.name, request.rid) == ("m", "a/?b")


@pytest.mark.parametrize("key", ["status", "message"])
def test_dps_response_strings_are_checked(key: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_dps_response(f"{DPS}200/?$rid=1", wire.encode_json({key: 5}))
    assert str(info.value) == f"DPS response: {key!r} is int, expected a string"
