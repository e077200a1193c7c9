"""Hub session behaviour mutation testing found unpinned (issue #14): the exact actions
of each input, twin version ordering, method effects and their PUBACKs, the rids, and
what the session tells the twin about the sensors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from agent.core import methods, wire
from agent.core.actions import CancelTimer, Publish, StartTimer, Subscribe
from agent.core.session import (
    METHOD_TAG,
    TWIN_GET_ATTEMPTS,
    TWIN_GET_TIMER,
    TWIN_TAG,
    HubSession,
    SettingsChanged,
    sensor_infos,
)
from agent.core.telemetry import MemoryQueue, Publisher, Sample, build_message
from agent.core.twin import SensorInfo, initial_settings
from tests.agent.test_session import context, publishes, status


def make(*, budget: bool = True, messages: int = 0, timeout_s: float | None = None) -> HubSession:
    queue = MemoryQueue(10)
    for n in range(messages):
        queue.append(
            build_message(sequence=n, timestamp_s=1.8e9, sample=Sample({}, {}), message_id=f"m{n}")
        )
    extra = {} if timeout_s is None else {"twin_get_timeout_s": timeout_s}
    return HubSession(
        device_id="dev-1",
        publisher=Publisher(queue, max_in_flight=5),
        settings=initial_settings(60.0),
        default_interval_s=60.0,
        context=context,
        status=status,
        budget_allows=lambda: budget,
        **extra,  # type: ignore[arg-type]
    )


def twin_answer(s: HubSession, rid: str, desired: object, reported: object = None) -> list[object]:
    body = {"desired": desired, "reported": reported or {}}
    topic, payload = wire.format_twin_response(200, rid, body)
    return list(s.on_message(topic, payload))


def synced(s: HubSession, desired: dict[str, object] | None = None) -> list[object]:
    s.on_connected()
    return twin_answer(s, "1", desired or {"$version": 1})


def desired_push(s: HubSession, version: int, patch: dict[str, object]) -> list[object]:
    topic, payload = wire.format_desired_patch(version, patch)
    return list(s.on_message(topic, payload))


def method(s: HubSession, name: str, rid: str, payload: object) -> list[object]:
    topic, body = wire.format_method_request(name, rid, payload)
    return list(s.on_message(topic, body))


def test_connect_actions_in_order() -> None:
    s = make(timeout_s=12.5)
    assert s.twin_get_timeout_s == 12.5
    assert s.on_connected() == [
        Subscribe(wire.TWIN_RESPONSE_FILTER),
        Subscribe(wire.TWIN_DESIRED_FILTER),
        Subscribe(wire.METHODS_FILTER),
        Subscribe("devices/dev-1/messages/devicebound/#"),
        Publish("$iothub/twin/GET/?$rid=1", b"", 1, tag=TWIN_TAG),
        StartTimer(TWIN_GET_TIMER, 12.5),
    ]
    assert s.twin_get_attempts == 1
    assert s.rejected_desired == ()


def test_the_default_twin_get_timeout_is_30_s() -> None:
    s = make()
    assert StartTimer(TWIN_GET_TIMER, 30.0) in s.on_connected()


def test_a_twin_get_answer_applies_the_document_in_order() -> None:
    s = make()
    s.on_connected()
    actions = twin_answer(
        s,
        "1",
        {"$version": 5, "telemetryIntervalSeconds": 9},
        {"$version": 2, "hub": "hub-a.local"},
    )
    assert actions[0] == CancelTimer(TWIN_GET_TIMER)
    assert actions[1] == SettingsChanged(s.settings)
    (patch,) = publishes(actions)
    assert patch.topic == "$iothub/twin/PATCH/properties/reported/?$rid=2"
    assert patch.qos == 1 and patch.tag == TWIN_TAG
    body = json.loads(patch.payload)
    assert "hub" not in body and "$version" not in body  # the hub holds the same hub
    assert len(actions) == 3


def test_a_twin_answer_without_a_change_reports_but_announces_nothing() -> None:
    s = make()
    s.on_connected()
    actions = twin_answer(s, "1", {})  # no $version: the default's ack stays as it was
    assert not any(isinstance(a, SettingsChanged) for a in actions)
    assert publishes(actions)


def test_unknown_or_failed_twin_answers_change_nothing() -> None:
    s = make()
    s.on_connected()
    topic, payload = wire.format_twin_response(
        200, "99", {"desired": {"telemetryIntervalSeconds": 5}}
    )
    assert s.on_message(topic, payload) == []  # not one of our GETs
    topic, payload = wire.format_twin_response(204, "2", None)  # a PATCH's answer
    assert s.on_message(topic, payload) == []
    topic, payload = wire.format_twin_response(404, "1", {})
    assert s.on_message(topic, payload) == []
    topic, payload = wire.format_twin_response(200, "1", [1, 2])  # not a document
    assert s.on_message(topic, payload) == []
    assert s.settings.telemetry_interval_s == 60.0
    # The GET is still outstanding: a good answer later is applied.
    assert CancelTimer(TWIN_GET_TIMER) in twin_answer(s, "1", {"telemetryIntervalSeconds": 5})
    assert s.settings.telemetry_interval_s == 5.0


def test_the_twin_get_timer_after_an_answer_or_another_timer_is_ignored() -> None:
    s = make()
    synced(s)
    assert s.on_timer(TWIN_GET_TIMER) == []
    assert s.on_timer("other") == []
    fresh = make()
    assert fresh.on_timer(TWIN_GET_TIMER) == []  # no GET sent yet
    fresh.on_connected()
    assert fresh.on_timer("other") == []


def test_exactly_three_gets_then_reporting_without_the_twin() -> None:
    assert TWIN_GET_ATTEMPTS == 3
    s = make()
    s.on_connected()
    second = s.on_timer(TWIN_GET_TIMER)
    assert second == [
        Publish("$iothub/twin/GET/?$rid=2", b"", 1, tag=TWIN_TAG),
        StartTimer(TWIN_GET_TIMER, 30.0),
    ]
    assert publishes(s.on_timer(TWIN_GET_TIMER))[0].topic == "$iothub/twin/GET/?$rid=3"
    final = s.on_timer(TWIN_GET_TIMER)
    (patch,) = final
    assert isinstance(patch, Publish) and patch.topic.startswith("$iothub/twin/PATCH/")
    assert s.twin_get_attempts == 3


@pytest.mark.parametrize("version", [4, 5])
def test_a_push_not_newer_than_the_applied_version_is_ignored(version: int) -> None:
    s = make()
    synced(s, {"$version": 5, "telemetryIntervalSeconds": 7})
    assert desired_push(s, version, {"telemetryIntervalSeconds": 9}) == []  # nothing new to say
    assert s.settings.telemetry_interval_s == 7.0


def test_a_newer_push_is_applied_and_becomes_the_version_to_beat() -> None:
    s = make()
    synced(s, {"$version": 5})
    actions = desired_push(s, 6, {"telemetryIntervalSeconds": 9})
    assert actions[0] == SettingsChanged(s.settings)
    assert s.settings.telemetry_interval_s == 9.0
    desired_push(s, 6, {"telemetryIntervalSeconds": 11})
    assert s.settings.telemetry_interval_s == 9.0


def test_pushes_without_a_version_are_always_applied() -> None:
    s = make()
    synced(s, {"$version": 5})
    topic = "$iothub/twin/PATCH/properties/desired/?x=1"
    s.on_message(topic, b'{"telemetryIntervalSeconds": 3}')
    assert s.settings.telemetry_interval_s == 3.0
    s.on_message(topic, b'{"telemetryIntervalSeconds": 4}')
    assert s.settings.telemetry_interval_s == 4.0
    # ... and do not become the version to beat: version 6 is still newer than 5.
    desired_push(s, 6, {"telemetryIntervalSeconds": 8})
    assert s.settings.telemetry_interval_s == 8.0


def test_a_push_before_the_twin_is_applied_as_a_patch() -> None:
    s = make()
    s.on_connected()
    actions = desired_push(s, 2, {"telemetryIntervalSeconds": 20})
    assert actions == [SettingsChanged(s.settings)]  # no report: the hub's reported is unknown
    assert s.settings.telemetry_interval_s == 20.0


def test_rejected_desired_values_are_kept_for_the_status() -> None:
    s = make()
    synced(s)
    desired_push(s, 2, {"telemetryIntervalSeconds": 0})
    assert s.rejected_desired == ("telemetryIntervalSeconds must be between 1 and 86400 s, got 0",)
    desired_push(s, 3, {"telemetryIntervalSeconds": 5})
    assert s.rejected_desired == ()


def test_set_interval_by_method_keeps_the_sensor_settings_and_reports() -> None:
    s = make()
    synced(s)
    desired_push(s, 2, {"sensors": {"tmp102@1:0x48": {"enabled": False}}})
    before = s.settings
    actions = method(s, "setTelemetryInterval", "8", {"seconds": 15})
    assert actions[0] == SettingsChanged(s.settings)
    assert s.settings.telemetry_interval_s == 15.0
    assert s.settings.disabled_sensors == before.disabled_sensors
    assert s.settings.sensor_acks == before.sensor_acks
    assert s.settings.interval_ack == {
        "value": 15.0, "ac": 200, "av": 0, "ad": "set by setTelemetryInterval"
    }  # fmt: skip
    reply, patch = publishes(actions)
    assert reply == Publish(
        "$iothub/methods/res/200/?$rid=8",
        b'{"telemetryIntervalSeconds":15}',
        1,
        tag=f"{METHOD_TAG}8",
    )
    assert json.loads(patch.payload)["telemetryIntervalSeconds"]["value"] == 15.0


def test_get_status_answers_with_the_status_callback() -> None:
    s = make()
    (reply,) = method(s, "getStatus", "3", None)
    assert reply == Publish(
        "$iothub/methods/res/200/?$rid=3", b'{"state":"CONNECTED"}', 1, tag=f"{METHOD_TAG}3"
    )


def test_reprovision_declined_when_the_budget_is_spent() -> None:
    s = make(budget=False)
    (reply,) = method(s, "reprovision", "4", {})
    assert isinstance(reply, Publish) and reply.topic == "$iothub/methods/res/429/?$rid=4"
    assert not s.has_pending_effects


def test_a_reprovision_effect_waits_for_its_own_puback() -> None:
    s = make(messages=1)
    s.on_connected()
    (reply,) = method(s, "reprovision", "4", {"force": False})
    assert reply.tag == "method:4"
    assert s.has_pending_effects
    assert s.on_puback(9) == []  # not the reply's PUBACK (the mid is not known yet)
    s.on_published("method:4", 9)
    s.on_published("method:5", 10)  # a reply with no effect: nothing to remember
    assert s.on_puback(10) == []
    assert s.on_puback(9) == [methods.Reprovision(force=False)]
    assert s.on_puback(9) == []  # once


def test_effects_whose_puback_never_came_are_handed_over_once() -> None:
    s = make()
    method(s, "reprovision", "4", {})
    assert s.take_pending_effects() == [methods.Reprovision(force=False)]
    assert s.take_pending_effects() == [] and not s.has_pending_effects


def test_a_disconnect_forgets_pending_effects_and_frees_the_publisher() -> None:
    s = make(messages=2)
    telemetry = publishes(s.on_connected())[1:]
    assert [p.tag for p in telemetry] == ["m0", "m1"]
    method(s, "reprovision", "4", {})
    s.on_disconnected()
    assert not s.has_pending_effects
    assert s.take_pending_effects() == []
    s.publisher.connect("dev-1")
    assert [p.tag for p in s.pump()] == ["m0", "m1"]  # sent again on the next connection


def test_telemetry_pubacks_pump_more_and_twin_tags_are_not_telemetry() -> None:
    s = make(messages=7)
    first = [p.tag for p in publishes(s.on_connected()) if p.tag and p.tag.startswith("m")]
    assert first == ["m0", "m1", "m2", "m3", "m4"]  # the in-flight window
    s.on_published(TWIN_TAG, 1)  # the twin GET: not counted as telemetry
    for n, tag in enumerate(first, start=2):
        s.on_published(tag, n)
    more = s.on_puback(2)
    assert [p.tag for p in publishes(more)] == ["m5"]
    assert s.publisher.acked_total == 1
    assert s.pump() == []


def test_a_c2d_message_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    s = make()
    with caplog.at_level("INFO", logger="agent.core.session"):
        assert s.on_message("devices/dev-1/messages/devicebound/a=1", b"hello") == []
    assert messages(caplog) == ["cloud-to-device message (5 bytes, properties {'a': '1'})"]


def test_a_malformed_method_payload_is_answered_400_with_the_problem() -> None:
    s = make()
    (reply,) = s.on_message("$iothub/methods/POST/getStatus/?$rid=5", b"{")
    assert isinstance(reply, Publish) and reply.tag == "method:5"
    body = json.loads(reply.payload)
    assert body["message"].startswith("payload is not JSON: method request: payload is not")


def test_report_is_empty_until_the_hub_reported_section_is_known() -> None:
    s = make()
    assert s.report() == []
    synced(s)
    assert s.report() == []  # in sync
    s.settings = initial_settings(33.0)
    (patch,) = s.report()
    assert isinstance(patch, Publish)
    # Only what differs from what the hub holds (the ack for desired version 1).
    assert json.loads(patch.payload) == {"telemetryIntervalSeconds": {"value": 33, "av": 0}}


@dataclass
class FakeSensor:
    name: str
    part: str
    quantities: tuple[str, ...]


def test_sensor_infos_describe_each_sensor_with_units() -> None:
    class Bare:
        pass

    infos = sensor_infos(
        [FakeSensor("bme280@1:0x76", "BME280", ("temperature_c", "pressure_hpa", "odd")), Bare()]
    )
    assert infos == (
        SensorInfo(
            "bme280@1:0x76", "BME280", {"temperature_c": "degC", "pressure_hpa": "hPa", "odd": ""}
        ),
        SensorInfo("", "", {}),
    )
    assert isinstance(infos, tuple) and sensor_infos([]) == ()


def test_the_reported_document_uses_the_context_of_the_moment() -> None:
    calls: list[int] = []

    def ctx() -> object:
        calls.append(1)
        return context()

    s = HubSession(
        device_id="dev-1",
        publisher=Publisher(MemoryQueue(1), max_in_flight=1),
        settings=initial_settings(60.0),
        default_interval_s=60.0,
        context=ctx,  # type: ignore[arg-type]
        status=lambda: {"state": "X"},
        budget_allows=lambda: True,
    )
    s.on_connected()
    twin_answer(s, "1", {})
    assert calls  # asked when the document was built, not at construction


def test_status_mapping_is_copied_into_the_reply() -> None:
    shared: Mapping[str, object] = {"state": "CONNECTED", "n": 1}
    s = HubSession(
        device_id="dev-1",
        publisher=Publisher(MemoryQueue(1), max_in_flight=1),
        settings=initial_settings(60.0),
        default_interval_s=60.0,
        context=context,
        status=lambda: shared,
        budget_allows=lambda: True,
    )
    (reply,) = method(s, "getStatus", "1", {})
    assert json.loads(reply.payload) == {"state": "CONNECTED", "n": 1}


LOGGER = "agent.core.session"


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_what_the_session_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The operator's view of the session: each line says what happened, with the data."""
    s = make()
    caplog.set_level("INFO", logger=LOGGER)
    s.on_connected()
    s.on_timer(TWIN_GET_TIMER)
    s.on_timer(TWIN_GET_TIMER)
    s.on_timer(TWIN_GET_TIMER)
    assert messages(caplog) == [
        "twin GET not answered within 30 s; asking again",
        "twin GET not answered within 30 s; asking again",
        "twin GET not answered after 3 attempts; reporting without it",
    ]
    caplog.clear()
    for code, rid in ((404, "3"), (300, "77"), (299, "78")):
        topic, payload = wire.format_twin_response(code, rid, {})
        s.on_message(topic, payload)
    topic, payload = wire.format_twin_response(200, "3", [1])
    s.on_message(topic, payload)
    s.on_message("$iothub/twin/res/abc", b"")
    assert messages(caplog) == [
        "twin GET failed with 404 (asked again when it times out)",
        "twin request 77 failed with 300",
        "twin GET: twin document: body is list, expected an object",
        "dropping a malformed message from the hub: twin response: topic "
        "'$iothub/twin/res/abc' has no '/?' query part",
    ]
    caplog.clear()
    twin_answer(s, "3", {"$version": 4})
    desired_push(s, 4, {"telemetryIntervalSeconds": 0})
    desired_push(s, 5, {"telemetryIntervalSeconds": 0})
    method(s, "getStatus", "9", None)
    assert messages(caplog) == [
        "ignoring desired properties version 4 (have 4)",
        "desired property rejected: telemetryIntervalSeconds must be between 1 and 86400 s, got 0",
        "method getStatus -> 200",
    ]


def test_a_push_is_a_patch_not_a_document() -> None:
    s = make()
    synced(s, {"$version": 1})
    desired_push(s, 2, {"telemetryIntervalSeconds": 5})
    desired_push(s, 3, {"sensors": {}})  # says nothing about the interval
    assert s.settings.telemetry_interval_s == 5.0


def test_the_first_report_carries_the_whole_context() -> None:
    s = make()
    s.on_connected()
    (patch,) = publishes(twin_answer(s, "1", {}, {}))
    body = json.loads(patch.payload)
    assert {
        k: body[k]
        for k in ("agentVersion", "hub", "deviceId", "provisionedAt", "lastReprovisionReason")
    } == {
        "agentVersion": "0.1.0",
        "hub": "hub-a.local",
        "deviceId": "dev-1",
        "provisionedAt": "2026-01-01T00:00:00Z",
        "lastReprovisionReason": "first boot",
    }
