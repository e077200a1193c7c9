"""The hub session core: subscriptions, twin sync, desired acks, methods, telemetry."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from agent.core import wire
from agent.core.actions import Publish, Subscribe
from agent.core.methods import Reprovision
from agent.core.session import HubSession, ReportedContext, SettingsChanged
from agent.core.telemetry import MemoryQueue, Publisher, Sample, build_message
from agent.core.twin import SensorInfo, initial_settings

SENSOR = SensorInfo("tmp102@1:0x48", "TMP102", {"temperature_c": "degC"})


def context() -> ReportedContext:
    return ReportedContext(
        agent_version="0.1.0",
        hub="hub-a.local",
        device_id="dev-1",
        provisioned_at="2026-01-01T00:00:00Z",
        last_reprovision_reason="first boot",
        sensors=(SENSOR,),
        errors={},
    )


def status() -> Mapping[str, object]:
    return {"state": "CONNECTED"}


def session(*, budget: bool = True) -> HubSession:
    queue = MemoryQueue(10)
    queue.append(
        build_message(sequence=1, timestamp_s=1.8e9, sample=Sample({}, {}), message_id="m1")
    )
    return HubSession(
        device_id="dev-1",
        publisher=Publisher(queue, max_in_flight=5),
        settings=initial_settings(60.0),
        default_interval_s=60.0,
        context=context,
        status=status,
        budget_allows=lambda: budget,
    )


def publishes(actions: Sequence[object]) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish)]


def connect_and_sync(
    s: HubSession, desired: dict[str, object], reported: dict[str, object]
) -> list[object]:
    actions = s.on_connected()
    get = next(p for p in publishes(actions) if p.topic.startswith("$iothub/twin/GET/"))
    rid = get.topic.rsplit("=", 1)[1]
    topic, payload = wire.format_twin_response(200, rid, {"desired": desired, "reported": reported})
    return list(s.on_message(topic, payload))


def test_connect_subscribes_gets_twin_and_sends_queued_telemetry() -> None:
    s = session()
    actions = s.on_connected()
    filters = [a.topic_filter for a in actions if isinstance(a, Subscribe)]
    assert filters == [
        wire.TWIN_RESPONSE_FILTER,
        wire.TWIN_DESIRED_FILTER,
        wire.METHODS_FILTER,
        "devices/dev-1/messages/devicebound/#",
    ]
    topics = [p.topic for p in publishes(actions)]
    assert topics[0].startswith("$iothub/twin/GET/?$rid=")
    assert topics[1].startswith("devices/dev-1/messages/events/")


def test_twin_get_applies_desired_and_patches_only_what_differs() -> None:
    s = session()
    actions = connect_and_sync(
        s, {"telemetryIntervalSeconds": 5, "$version": 3}, {"agentVersion": "0.1.0", "$version": 9}
    )
    assert SettingsChanged(s.settings) in actions
    assert s.settings.telemetry_interval_s == 5.0
    (patch,) = publishes(actions)
    assert patch.topic.startswith("$iothub/twin/PATCH/properties/reported/")
    body = json.loads(patch.payload)
    assert "agentVersion" not in body  # the hub already has it
    assert body["telemetryIntervalSeconds"] == {"value": 5, "ac": 200, "av": 3, "ad": "applied"}
    assert body["hub"] == "hub-a.local"
    assert s.report() == []  # nothing new to say


def test_desired_push_and_stale_versions() -> None:
    s = session()
    connect_and_sync(s, {"$version": 3}, {})
    topic, payload = wire.format_desired_patch(4, {"telemetryIntervalSeconds": 7})
    actions = s.on_message(topic, payload)
    assert s.settings.telemetry_interval_s == 7.0
    assert publishes(actions)
    topic, payload = wire.format_desired_patch(4, {"telemetryIntervalSeconds": 9})
    s.on_message(topic, payload)
    assert s.settings.telemetry_interval_s == 7.0  # same version: ignored


def test_method_reply_first_effect_after_puback() -> None:
    s = session()
    connect_and_sync(s, {}, {})
    topic, payload = wire.format_method_request("reprovision", "42", {"force": True})
    actions = s.on_message(topic, payload)
    (reply,) = publishes(actions)
    assert reply.topic == "$iothub/methods/res/202/?$rid=42"
    assert not any(isinstance(a, Reprovision) for a in actions)
    assert reply.tag is not None
    s.on_published(reply.tag, 77)
    assert s.has_pending_effects
    assert s.on_puback(77) == [Reprovision(force=True)]
    assert not s.has_pending_effects


def test_method_with_garbage_payload_is_answered_400() -> None:
    s = session()
    actions = s.on_message("$iothub/methods/POST/getStatus/?$rid=5", b"{not json")
    (reply,) = publishes(actions)
    assert reply.topic == "$iothub/methods/res/400/?$rid=5"


def test_set_interval_method_changes_settings_and_reports() -> None:
    s = session()
    connect_and_sync(s, {}, {})
    topic, payload = wire.format_method_request("setTelemetryInterval", "1", {"seconds": 12})
    actions = s.on_message(topic, payload)
    assert SettingsChanged(s.settings) in actions
    assert s.settings.telemetry_interval_s == 12.0
    patches = [p for p in publishes(actions) if "reported" in p.topic]
    assert json.loads(patches[0].payload)["telemetryIntervalSeconds"]["value"] == 12


def test_garbage_from_the_hub_is_dropped() -> None:
    s = session()
    assert s.on_message("$iothub/twin/res/abc", b"") == []
    assert s.on_message("$iothub/twin/PATCH/properties/desired/?$version=1", b"[]") == []


def test_telemetry_puback_frees_the_window() -> None:
    s = session()
    actions = s.on_connected()
    telemetry = [p for p in publishes(actions) if p.tag == "m1"]
    assert telemetry
    s.on_published("m1", 5)
    s.on_puback(5)
    assert s.publisher.acked_total == 1


def test_unanswered_twin_get_is_retried_then_the_session_reports_without_it() -> None:
    from agent.core.actions import CancelTimer, StartTimer
    from agent.core.session import TWIN_GET_ATTEMPTS, TWIN_GET_TIMER

    s = session()
    actions = s.on_connected()
    timers = [a for a in actions if isinstance(a, StartTimer)]
    assert timers == [StartTimer(TWIN_GET_TIMER, s.twin_get_timeout_s)]
    rids = [p.topic for p in publishes(actions) if p.topic.startswith("$iothub/twin/GET/")]
    assert s.report() == []  # nothing known about the hub's reported section yet
    for _ in range(TWIN_GET_ATTEMPTS - 1):
        again = s.on_timer(TWIN_GET_TIMER)
        gets = [p.topic for p in publishes(again) if p.topic.startswith("$iothub/twin/GET/")]
        assert len(gets) == 1 and gets[0] not in rids  # a new request id each time
        assert StartTimer(TWIN_GET_TIMER, s.twin_get_timeout_s) in again
        rids.extend(gets)
    assert s.twin_get_attempts == TWIN_GET_ATTEMPTS
    # The last one times out too: carry on, reporting the whole document.
    final = s.on_timer(TWIN_GET_TIMER)
    (patch,) = publishes(final)
    assert patch.topic.startswith("$iothub/twin/PATCH/properties/reported/")
    reported = json.loads(patch.payload)
    assert reported["agentVersion"] == "0.1.0" and reported["hub"] == "hub-a.local"
    assert not any(isinstance(a, StartTimer) for a in final)
    assert s.on_timer(TWIN_GET_TIMER) == []
    # A late answer to the first GET is still applied (desired properties).
    rid = rids[0].rsplit("=", 1)[1]
    topic, payload = wire.format_twin_response(
        200, rid, {"desired": {"$version": 4, "telemetryIntervalSeconds": 30}, "reported": {}}
    )
    late = s.on_message(topic, payload)
    assert CancelTimer(TWIN_GET_TIMER) in late
    assert s.settings.telemetry_interval_s == 30


def test_twin_get_answered_in_time_cancels_its_timer() -> None:
    from agent.core.actions import CancelTimer
    from agent.core.session import TWIN_GET_TIMER

    s = session()
    actions = connect_and_sync(s, {"$version": 1}, {})
    assert CancelTimer(TWIN_GET_TIMER) in actions
    assert s.on_timer(TWIN_GET_TIMER) == []
    assert s.twin_get_attempts == 1


def test_twin_get_error_status_is_asked_again_on_timeout() -> None:
    from agent.core.session import TWIN_GET_TIMER

    s = session()
    actions = s.on_connected()
    get = next(p for p in publishes(actions) if p.topic.startswith("$iothub/twin/GET/"))
    topic, payload = wire.format_twin_response(500, get.topic.rsplit("=", 1)[1], {})
    assert s.on_message(topic, payload) == []
    again = s.on_timer(TWIN_GET_TIMER)
    assert any(p.topic.startswith("$iothub/twin/GET/") for p in publishes(again))
