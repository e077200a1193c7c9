"""Hypothesis against the cores, for volume: whatever the cloud sends, nothing raises.

The same inputs reach a real agent through devcloud in ``test_fuzz_daemon.py``; here
they go straight into :class:`~agent.core.session.HubSession` (direct methods,
desired-property pushes, twin GET answers, cloud-to-device messages, arbitrary topics)
and :class:`~agent.core.provisioning.Registration` (DPS responses), many per example.
The properties: no exception ever leaves a core; every method call gets exactly one
answer, on its own rid; settings in force stay valid; what goes back to the cloud is
JSON and bounded.
"""

from __future__ import annotations

import json
import math
import random
import urllib.parse

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.core import twin
from agent.core.actions import Publish
from agent.core.provisioning import (
    Assigned,
    DpsConnected,
    DpsMessage,
    DpsSubscribed,
    DpsTimerFired,
    Failed,
    Registration,
)
from agent.core.session import HubSession, ReportedContext
from agent.core.telemetry import MemoryQueue, Publisher

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SENSORS = ("sht4x@1:0x45", "bme280@1:0x76")
#: IoT Hub's limits: a reported patch fits the twin (32 KB); a method reply 128 KB.
MAX_REPORTED_BYTES = 32 * 1024
MAX_METHOD_REPLY_BYTES = 128 * 1024
#: Numbers a JSON parser hands over that floats cannot hold: the issue's case first.
HUGE = int("1" + "0" * 400)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([HUGE, -HUGE, 0, 1, 59, 60, 86_400, 86_401, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
desired_keys = st.sampled_from(
    [
        "telemetryIntervalSeconds",
        "sensors",
        "$version",
        "other",
        *[twin.twin_key(s) for s in SENSORS],
    ]
) | st.text(max_size=12)
sensor_entries = st.dictionaries(
    st.sampled_from([twin.twin_key(s) for s in SENSORS]) | st.text(max_size=8),
    json_values | st.fixed_dictionaries({"enabled": json_values}),
    max_size=3,
)
desired_docs = st.dictionaries(desired_keys, json_values, max_size=5) | st.fixed_dictionaries(
    {"telemetryIntervalSeconds": json_values, "sensors": sensor_entries}
)
method_names = st.sampled_from(["getStatus", "reprovision", "setTelemetryInterval"]) | st.text(
    max_size=40
)
rids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=8)


def json_bytes(value: object) -> bytes:
    """What a cloud would send: Python's JSON (NaN/Infinity literals included)."""
    return json.dumps(value).encode()


payloads = json_values.map(json_bytes) | st.binary(max_size=64)


@st.composite
def hub_messages(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """(topic, payload, rid of a method call or None)."""
    kind = draw(st.sampled_from(["method", "desired", "twin", "c2d", "anything"]))
    if kind == "method":
        rid = draw(rids)
        name = draw(method_names)
        topic = f"$iothub/methods/POST/{name}/?$rid={rid}"
        payload = draw(
            payloads
            | st.fixed_dictionaries({"seconds": json_values}).map(json_bytes)
            | st.fixed_dictionaries({"force": json_values}).map(json_bytes)
        )
        plain = bool(name) and not any(c in name for c in "/?")
        return topic, payload, rid if plain else None
    if kind == "desired":
        version = draw(st.integers(min_value=-5, max_value=2**40) | st.just(HUGE))
        topic = f"$iothub/twin/PATCH/properties/desired/?$version={version}"
        return topic, json_bytes(draw(desired_docs)), None
    if kind == "twin":
        status = draw(st.sampled_from([200, 204, 400, 429, 500]))
        rid = draw(st.sampled_from(["1", "2", "3"]) | rids)
        body = {"desired": draw(desired_docs), "reported": draw(json_values)}
        return (
            f"$iothub/twin/res/{status}/?$rid={rid}",
            json_bytes(draw(st.just(body) | json_values)),
            None,
        )
    if kind == "c2d":
        props = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
        bag = urllib.parse.urlencode(props)
        return f"devices/dev-fuzz/messages/devicebound/{bag}", draw(st.binary(max_size=64)), None
    topic = draw(
        st.text(max_size=80) | st.sampled_from(["$iothub/", "$iothub/twin/res/", "devices/"])
    )
    return topic, draw(payloads), None


def new_session() -> HubSession:
    publisher = Publisher(MemoryQueue(100), max_in_flight=10)
    context = ReportedContext(
        agent_version="0.0-fuzz",
        hub="hub.example",
        device_id="dev-fuzz",
        provisioned_at=None,
        last_reprovision_reason=None,
        sensors=tuple(twin.SensorInfo(name, "part", {"temperature_c": "°C"}) for name in SENSORS),
        errors={},
    )
    return HubSession(
        device_id="dev-fuzz",
        publisher=publisher,
        settings=twin.initial_settings(60.0),
        default_interval_s=60.0,
        context=lambda: context,
        status=lambda: {"state": "CONNECTED"},
        budget_allows=lambda: True,
    )


def method_replies(actions: list[object], rid: str) -> list[Publish]:
    return [
        a
        for a in actions
        if isinstance(a, Publish)
        and a.topic.startswith("$iothub/methods/res/")
        and a.topic.endswith(f"?$rid={urllib.parse.quote(rid)}")
    ]


def check_settings(session: HubSession) -> None:
    seconds = session.settings.telemetry_interval_s
    assert math.isfinite(seconds) and twin.MIN_INTERVAL_S <= seconds <= twin.MAX_INTERVAL_S
    assert session.settings.disabled_sensors <= set(SENSORS)


def check_outgoing(actions: list[object]) -> None:
    for action in actions:
        if not isinstance(action, Publish):
            continue
        json.loads(action.payload)  # strict enough: what the hub must parse
        if action.topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            assert len(action.payload) <= MAX_REPORTED_BYTES, len(action.payload)
        if action.topic.startswith("$iothub/methods/res/"):
            assert len(action.payload) <= MAX_METHOD_REPLY_BYTES, len(action.payload)


@FUZZ
@given(messages=st.lists(hub_messages(), min_size=1, max_size=12))
@example(
    messages=[
        (
            "$iothub/twin/PATCH/properties/desired/?$version=2",
            b'{"telemetryIntervalSeconds": ' + str(HUGE).encode() + b"}",
            None,
        )
    ]
)
def test_nothing_the_hub_sends_makes_the_session_raise(
    messages: list[tuple[str, bytes, str | None]],
) -> None:
    session = new_session()
    session.on_connected()
    for topic, payload, _ in messages:
        actions = session.on_message(topic, payload)
        check_settings(session)
        assert all(not isinstance(a, BaseException) for a in actions)


@FUZZ
@given(messages=st.lists(hub_messages(), min_size=1, max_size=12))
@example(
    messages=[
        (
            "$iothub/methods/POST/setTelemetryInterval/?$rid=1",
            b'{"seconds": ' + str(HUGE).encode() + b"}",
            "1",
        )
    ]
)
def test_every_method_call_gets_one_answer_below_500_on_its_own_rid(
    messages: list[tuple[str, bytes, str | None]],
) -> None:
    session = new_session()
    session.on_connected()
    for topic, payload, rid in messages:
        actions = session.on_message(topic, payload)
        check_outgoing(actions)
        if rid is None:
            continue
        replies = method_replies(actions, rid)
        assert len(replies) == 1, (topic, actions)
        status = int(replies[0].topic.split("/")[3])
        assert 200 <= status < 500, (topic, payload, replies[0].payload[:300])


@FUZZ
@given(
    # null is no bad value: it restores the configured default (ack 203)
    bad=json_values.filter(
        lambda v: v is not None and not (isinstance(v, int | float) and not isinstance(v, bool))
    )
    | st.sampled_from([HUGE, -HUGE, math.nan, math.inf, 0, 10**6]),
    enabled=st.booleans(),
)
@example(bad=HUGE, enabled=False)
def test_one_bad_desired_property_never_drops_the_rest(bad: object, enabled: bool) -> None:
    session = new_session()
    session.on_connected()
    key = twin.twin_key(SENSORS[0])
    patch = {"telemetryIntervalSeconds": bad, "sensors": {key: {"enabled": enabled}}}
    actions = session.on_message(
        "$iothub/twin/PATCH/properties/desired/?$version=7", json_bytes(patch)
    )
    check_settings(session)
    check_outgoing(actions)
    assert (SENSORS[0] in session.settings.disabled_sensors) is (not enabled)
    assert session.settings.interval_ack["ac"] == 400


@st.composite
def dps_topics(draw: st.DrawFn, rid: str) -> str:
    status = draw(st.sampled_from([200, 202, 400, 401, 403, 404, 429, 500, 503]) | st.integers())
    query = {"$rid": draw(st.sampled_from([rid, "0", "99"]) | rids)}
    if draw(st.booleans()):
        query["retry-after"] = draw(st.sampled_from(["0", "1", "3", "-1", "nan", "1e9", "x"]))
    return f"$dps/registrations/res/{status}/?{urllib.parse.urlencode(query)}"


registration_states = st.fixed_dictionaries(
    {},
    optional={
        "assignedHub": json_values | st.just("hub.example"),
        "deviceId": json_values | st.just("dev-fuzz"),
        "status": st.sampled_from(["assigned", "failed", "disabled", "assigning"]) | json_values,
        "substatus": json_values,
        "payload": json_values,
        "lastUpdatedDateTimeUtc": json_values,
        "errorCode": json_values,
    },
)
dps_bodies = st.fixed_dictionaries(
    {},
    optional={
        "operationId": json_values | st.just("4.abc"),
        "status": st.sampled_from(["assigned", "assigning", "failed", "disabled"]) | json_values,
        "registrationState": registration_states | json_values,
        "errorCode": json_values,
        "message": json_values,
    },
)


@settings(FUZZ, max_examples=80)
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_any_dps_answers_end_one_attempt_cleanly(data: st.DataObject, seed: int) -> None:
    registration = Registration("dev-fuzz", {"model": "m"}, rng=random.Random(seed))
    outcomes: list[object] = []
    for event in (DpsConnected(), DpsSubscribed((1,))):
        outcomes += registration.handle(event)
    for _ in range(data.draw(st.integers(1, 8))):
        rid = registration._outstanding_rid or "1"  # the rid it waits for
        topic = data.draw(dps_topics(rid))
        body = data.draw(dps_bodies.map(json_bytes) | payloads)
        outcomes += registration.handle(DpsMessage(topic, body))
        if data.draw(st.booleans()):
            outcomes += registration.handle(
                DpsTimerFired(
                    data.draw(st.sampled_from(["dps.timeout", "dps.poll", "dps.retry", "other"]))
                )
            )
    ends = [o for o in outcomes if isinstance(o, Assigned | Failed)]
    assert len(ends) <= 1, ends  # one attempt ends once
    for end in ends:
        if isinstance(end, Assigned):
            assert isinstance(end.assignment.assigned_hub, str) and end.assignment.assigned_hub
            assert isinstance(end.assignment.device_id, str) and end.assignment.device_id
        else:
            assert str(end.error)  # says why
            assert end.retry_after_s is None or (
                math.isfinite(end.retry_after_s) and end.retry_after_s >= 0
            )
    for action in outcomes:
        if hasattr(action, "delay_s"):
            delay = action.delay_s
            assert math.isfinite(delay) and 0 <= delay <= 3600, action
