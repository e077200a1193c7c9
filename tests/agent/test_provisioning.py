"""The DPS registration machine, driven with real wire-format messages."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core import wire
from agent.core.actions import CancelTimer, Publish, StartTimer, Subscribe
from agent.core.backoff import BackoffPolicy
from agent.core.provisioning import (
    RETRY_TIMER,
    TIMEOUT_TIMER,
    Assigned,
    Assignment,
    DpsAction,
    DpsConnected,
    DpsConnectionLost,
    DpsConnectRefused,
    DpsMessage,
    DpsSubscribed,
    DpsTimerFired,
    Failed,
    Phase,
    Registration,
    RegistrationSent,
    registration_payload,
)
from agent.errors import (
    ConnectionRefusedByServer,
    ProtocolError,
    ProvisioningError,
    ThrottledError,
    TransportError,
)

ASSIGNED_STATE = {
    "registrationId": "dev-1",
    "assignedHub": "hub-a.local",
    "deviceId": "dev-1",
    "status": "assigned",
    "substatus": "initialAssignment",
    "lastUpdatedDateTimeUtc": "2026-01-01T00:00:01Z",
    "payload": {"ok": True},
}


def machine(**kwargs: object) -> Registration:
    return Registration(
        "dev-1",
        {"model": "m"},
        rng=random.Random(1),
        response_timeout_s=5.0,
        default_poll_s=2.0,
        throttle_policy=BackoffPolicy(0.5, 4.0),
        **kwargs,  # type: ignore[arg-type]
    )


def registered(reg: Registration) -> str:
    """Connect and subscribe; return the rid of the register request."""
    assert reg.handle(DpsConnected()) == [
        Subscribe(wire.DPS_RESPONSE_FILTER, 1),
        StartTimer(TIMEOUT_TIMER, 5.0),
    ]
    actions = reg.handle(DpsSubscribed((1,)))
    publish = actions[0]
    assert isinstance(publish, Publish)
    assert publish.topic.startswith("$dps/registrations/PUT/iotdps-register/?$rid=")
    assert json.loads(publish.payload) == {"registrationId": "dev-1", "payload": {"model": "m"}}
    assert RegistrationSent() in actions
    return publish.topic.rsplit("=", 1)[1]


def answer(
    reg: Registration,
    status: int,
    rid: str,
    body: Mapping[str, object] | None,
    retry: int | None = None,
) -> list[DpsAction]:
    topic, payload = wire.format_dps_response(status, rid, body, retry_after_s=retry)
    return reg.handle(DpsMessage(topic, payload))


def outcome(actions: list[DpsAction]) -> Assigned | Failed:
    finals = [a for a in actions if isinstance(a, Assigned | Failed)]
    assert len(finals) == 1, actions
    return finals[0]


def test_register_then_poll_then_assigned() -> None:
    reg = machine()
    rid = registered(reg)
    actions = answer(reg, 202, rid, {"operationId": "op-1", "status": "assigning"}, retry=3)
    assert actions == [CancelTimer(TIMEOUT_TIMER), StartTimer(RETRY_TIMER, 3.0)]
    actions = reg.handle(DpsTimerFired(RETRY_TIMER))
    poll = actions[0]
    assert isinstance(poll, Publish)
    assert "iotdps-get-operationstatus" in poll.topic and "operationId=op-1" in poll.topic
    poll_rid = poll.topic.split("$rid=")[1].split("&")[0]
    assert poll_rid != rid
    done = outcome(
        answer(
            reg,
            200,
            poll_rid,
            {"operationId": "op-1", "status": "assigned", "registrationState": ASSIGNED_STATE},
        )
    )
    assert done == Assigned(
        Assignment(
            "hub-a.local", "dev-1", "2026-01-01T00:00:01Z", "initialAssignment", {"ok": True}
        )
    )
    assert reg.phase is Phase.DONE
    assert reg.handle(DpsTimerFired(RETRY_TIMER)) == []


def test_assigning_without_retry_after_uses_default_poll() -> None:
    reg = machine()
    rid = registered(reg)
    actions = answer(reg, 202, rid, {"operationId": "op-1", "status": "assigning"})
    assert StartTimer(RETRY_TIMER, 2.0) in actions


def test_still_assigning_on_poll_polls_again() -> None:
    reg = machine()
    rid = registered(reg)
    answer(reg, 202, rid, {"operationId": "op-1", "status": "assigning"}, retry=1)
    poll = reg.handle(DpsTimerFired(RETRY_TIMER))[0]
    assert isinstance(poll, Publish)
    poll_rid = poll.topic.split("$rid=")[1].split("&")[0]
    actions = answer(reg, 200, poll_rid, {"operationId": "op-1", "status": "assigning"}, retry=2)
    assert StartTimer(RETRY_TIMER, 2.0) in actions
    assert reg.phase is Phase.WAITING


def test_stale_rid_is_ignored() -> None:
    reg = machine()
    rid = registered(reg)
    assert answer(reg, 200, rid + "0", {"status": "assigned"}) == []
    assert reg.phase is Phase.REGISTERING


@pytest.mark.parametrize("retry", [7, None])
def test_429_waits_retry_after_or_backoff_then_registers_again(retry: int | None) -> None:
    reg = machine()
    rid = registered(reg)
    actions = answer(reg, 429, rid, {"errorCode": 429001, "message": "throttled"}, retry=retry)
    timers = [a for a in actions if isinstance(a, StartTimer)]
    assert len(timers) == 1 and timers[0].name == RETRY_TIMER
    if retry is not None:
        assert retry <= timers[0].delay_s <= retry + 0.5
    else:
        assert 0 <= timers[0].delay_s <= 0.5
    again = reg.handle(DpsTimerFired(RETRY_TIMER))
    assert isinstance(again[0], Publish) and "iotdps-register" in again[0].topic
    # The budget counts attempts, not throttled resends.
    assert RegistrationSent() not in again


def test_endless_429_ends_the_attempt_as_throttled() -> None:
    reg = machine(max_throttled=2)
    rid = registered(reg)
    final = None
    for _ in range(3):
        actions = answer(reg, 429, rid, None, retry=1)
        if reg.phase is Phase.DONE:
            final = outcome(actions)
            break
        publish = reg.handle(DpsTimerFired(RETRY_TIMER))[0]
        assert isinstance(publish, Publish)
        rid = publish.topic.rsplit("=", 1)[1]
    assert isinstance(final, Failed)
    assert isinstance(final.error, ThrottledError)
    assert final.retry_after_s == 1.0 and not final.rejected


@pytest.mark.parametrize(
    ("status", "rejected"),
    [(401, True), (404, True), (403, True), (400, False), (500, False), (503, False)],
)
def test_error_statuses_end_the_attempt(status: int, rejected: bool) -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(answer(reg, status, rid, {"errorCode": status * 1000, "message": "nope"}))
    assert isinstance(final, Failed)
    assert isinstance(final.error, ProvisioningError)
    assert final.error.status == status
    assert final.rejected is rejected
    assert "nope" in str(final.error)


@pytest.mark.parametrize("status", ["failed", "disabled"])
def test_200_failed_or_disabled_is_a_rejection(status: str) -> None:
    reg = machine()
    rid = registered(reg)
    body = {
        "status": status,
        "registrationState": {"status": status, "errorMessage": "enrollment off"},
    }
    final = outcome(answer(reg, 200, rid, body))
    assert isinstance(final, Failed) and final.rejected
    assert "enrollment off" in str(final.error)


def test_assigned_without_hub_is_a_protocol_error() -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(answer(reg, 200, rid, {"status": "assigned", "registrationState": {}}))
    assert isinstance(final, Failed) and isinstance(final.error, ProtocolError)


def test_no_answer_times_out() -> None:
    reg = machine()
    registered(reg)
    final = outcome(reg.handle(DpsTimerFired(TIMEOUT_TIMER)))
    assert isinstance(final, Failed)
    assert isinstance(final.error, ProvisioningError) and final.error.status == 408


def test_connection_lost_and_refused() -> None:
    lost = outcome(machine().handle(DpsConnectionLost("reset by peer")))
    assert isinstance(lost, Failed) and isinstance(lost.error, TransportError) and not lost.rejected
    refused = outcome(machine().handle(DpsConnectRefused(5)))
    assert isinstance(refused, Failed) and refused.rejected
    assert isinstance(refused.error, ConnectionRefusedByServer)
    unavailable = outcome(machine().handle(DpsConnectRefused(3)))
    assert isinstance(unavailable, Failed) and not unavailable.rejected


def test_refused_subscription_fails() -> None:
    reg = machine()
    reg.handle(DpsConnected())
    final = outcome(reg.handle(DpsSubscribed((0x80,))))
    assert isinstance(final, Failed)


def test_registration_payload_carries_model_version_sensors() -> None:
    payload = registration_payload(
        model="pi4", agent_version="0.1.0", sensors=["bme280@1:0x76"], extra={"site": "lab"}
    )
    assert payload == {
        "site": "lab",
        "model": "pi4",
        "agentVersion": "0.1.0",
        "sensors": ["bme280@1:0x76"],
    }


@given(topic=st.text(max_size=60), payload=st.binary(max_size=60))
def test_garbage_from_dps_never_crashes(topic: str, payload: bytes) -> None:
    reg = machine()
    registered(reg)
    actions = reg.handle(DpsMessage(topic, payload))
    # Either ignored (stale/unsolicited) or the attempt ends cleanly as Failed.
    assert actions == [] or isinstance(outcome(actions), Failed)
