"""DPS registration cases mutation testing found unpinned (issue #14): a second CONNACK,
"assigning" without an operationId, ``retry-after`` 0 and under 1 s, and the exact
actions, errors and reasons of each ending."""

from __future__ import annotations

import random

import pytest

from agent.core import wire
from agent.core.actions import CancelTimer, Publish, StartTimer
from agent.core.backoff import Backoff, BackoffPolicy
from agent.core.provisioning import (
    MIN_POLL_S,
    RETRY_TIMER,
    TIMEOUT_TIMER,
    Assigned,
    Assignment,
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
)
from agent.errors import ProtocolError, ProvisioningError, ThrottledError
from tests.agent.test_provisioning import ASSIGNED_STATE, answer, machine, outcome, registered


def poll_rid(reg: Registration) -> str:
    actions = reg.handle(DpsTimerFired(RETRY_TIMER))
    publish = actions[0]
    assert isinstance(publish, Publish)
    assert actions[1] == StartTimer(TIMEOUT_TIMER, 5.0)
    return publish.topic.split("$rid=")[1].split("&")[0]


def test_a_new_registration_is_waiting_to_connect() -> None:
    reg = Registration("dev-9", None, rng=random.Random(1))
    assert (reg.phase, reg.operation_id, reg.throttled, reg.outcome) == (
        Phase.CONNECTING, None, 0, None
    )  # fmt: skip
    assert (reg.response_timeout_s, reg.default_poll_s, reg.max_throttled) == (30.0, 3.0, 8)
    assert reg.payload is None
    reg.handle(DpsConnected())
    publish = reg.handle(DpsSubscribed((1,)))[0]
    assert isinstance(publish, Publish)
    assert publish.topic == "$dps/registrations/PUT/iotdps-register/?$rid=1"
    assert publish.payload == b'{"registrationId":"dev-9","payload":null}'
    assert publish.qos == 1


@pytest.mark.parametrize("stage", ["subscribing", "registering", "waiting"])
def test_a_second_connack_on_one_connection_ends_the_attempt(stage: str) -> None:
    reg = machine()
    reg.handle(DpsConnected())
    if stage != "subscribing":
        rid = registered_after_connect(reg)
        if stage == "waiting":
            answer(reg, 202, rid, {"operationId": "op", "status": "assigning"}, retry=2)
    actions = reg.handle(DpsConnected())
    assert actions[:2] == [CancelTimer(RETRY_TIMER), CancelTimer(TIMEOUT_TIMER)]
    final = outcome(actions)
    assert isinstance(final, Failed) and not final.rejected
    assert isinstance(final.error, ProtocolError)
    assert str(final.error) == "DPS: second CONNACK on one connection"
    assert reg.phase is Phase.DONE and reg.outcome == final
    assert reg.handle(DpsConnected()) == []  # done is done


def registered_after_connect(reg: Registration) -> str:
    actions = reg.handle(DpsSubscribed((1,)))
    publish = actions[0]
    assert isinstance(publish, Publish)
    assert actions == [publish, StartTimer(TIMEOUT_TIMER, 5.0), RegistrationSent()]
    return publish.topic.rsplit("=", 1)[1]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (202, {"status": "assigning"}),
        (202, {"operationId": "", "status": "assigning"}),
        (200, {"status": "assigning"}),
        (200, {"registrationState": {"status": "assigning"}}),
    ],
)
def test_assigning_without_an_operation_id_is_a_protocol_error(
    status: int, body: dict[str, object]
) -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(answer(reg, status, rid, body, retry=1))
    assert isinstance(final, Failed) and not final.rejected
    assert str(final.error) == "DPS: 'assigning' without an operationId"


@pytest.mark.parametrize(("retry", "expected"), [(0, 2.0), (1, 1.0), (5, 5.0), (None, 2.0)])
def test_polling_waits_retry_after_but_never_polls_back_to_back(
    retry: int | None, expected: float
) -> None:
    """retry-after 0 would mean polling DPS as fast as it answers: the default applies."""
    assert MIN_POLL_S == 1.0
    reg = machine()
    rid = registered(reg)
    actions = answer(reg, 202, rid, {"operationId": "op-7", "status": "assigning"}, retry=retry)
    assert actions == [CancelTimer(TIMEOUT_TIMER), StartTimer(RETRY_TIMER, expected)]
    assert reg.phase is Phase.WAITING and reg.operation_id == "op-7"
    # A poll that is still assigning with retry-after 0 waits the default again.
    again = answer(reg, 200, poll_rid(reg), {"operationId": "op-7", "status": "assigning"}, 0)
    assert again == [CancelTimer(TIMEOUT_TIMER), StartTimer(RETRY_TIMER, 2.0)]


def test_429_with_retry_after_zero_retries_within_one_jitter_step() -> None:
    reg = machine()
    rid = registered(reg)
    actions = answer(reg, 429, rid, None, retry=0)
    assert actions[0] == CancelTimer(TIMEOUT_TIMER)
    timer = actions[1]
    assert isinstance(timer, StartTimer) and timer.name == RETRY_TIMER
    assert 0.0 <= timer.delay_s < 0.5  # retry-after 0 plus uniform(0, base 0.5)
    assert reg.throttled == 1


@pytest.mark.parametrize("retry_after", [0.0, 0.25, 0.999])
def test_backoff_honours_a_retry_after_under_one_second(retry_after: float) -> None:
    backoff = Backoff(BackoffPolicy(2.0, 60.0), random.Random(3))
    for _ in range(20):
        delay = backoff.next_delay_s(retry_after)
        assert retry_after <= delay < retry_after + 2.0  # never less than asked, no backoff
    assert backoff.attempt == 20


def test_a_fractional_retry_after_is_not_a_whole_number() -> None:
    topic = "$dps/registrations/res/202/?$rid=1&retry-after=0.5"
    with pytest.raises(ProtocolError) as info:
        wire.parse_dps_response(topic, b'{"operationId": "op", "status": "assigning"}')
    assert str(info.value) == (
        f"DPS response: retry-after='0.5' in topic {topic!r} is not a whole number"
    )
    reg = machine()
    registered(reg)
    final = outcome(reg.handle(DpsMessage(topic, b"{}")))
    assert isinstance(final, Failed) and isinstance(final.error, ProtocolError)


def test_endless_throttling_ends_after_exactly_max_throttled_retries() -> None:
    reg = machine(max_throttled=3)
    rid = registered(reg)
    for count in range(1, 4):
        actions = answer(reg, 429, rid, None, retry=2)
        assert reg.phase is Phase.WAITING and reg.throttled == count, actions
        publish = reg.handle(DpsTimerFired(RETRY_TIMER))[0]
        assert isinstance(publish, Publish) and "iotdps-register" in publish.topic
        rid = publish.topic.rsplit("=", 1)[1]
    final = outcome(answer(reg, 429, rid, None, retry=2))
    assert isinstance(final, Failed) and isinstance(final.error, ThrottledError)
    assert str(final.error) == "DPS status 429: still throttled after 3 retries"
    assert final.error.retry_after_s == 2.0 and final.retry_after_s == 2.0


def test_an_answer_while_waiting_is_stale() -> None:
    reg = machine()
    rid = registered(reg)
    answer(reg, 202, rid, {"operationId": "op", "status": "assigning"}, retry=2)
    # The register request was answered; nothing is outstanding until the poll.
    assert answer(reg, 200, rid, {"status": "assigned", "registrationState": ASSIGNED_STATE}) == []
    assert reg.phase is Phase.WAITING


def test_timers_that_do_not_apply_are_ignored() -> None:
    reg = machine()
    assert reg.handle(DpsTimerFired(RETRY_TIMER)) == []  # not waiting
    assert reg.handle(DpsTimerFired("other")) == []
    rid = registered(reg)
    answer(reg, 202, rid, {"operationId": "op", "status": "assigning"}, retry=2)
    assert reg.handle(DpsTimerFired(TIMEOUT_TIMER)) == []  # waiting: no request out
    assert reg.phase is Phase.WAITING


@pytest.mark.parametrize("phase", ["subscribing", "registering", "polling"])
def test_no_answer_in_each_phase_is_a_408_naming_the_phase(phase: str) -> None:
    reg = machine()
    reg.handle(DpsConnected())
    if phase != "subscribing":
        rid = registered_after_connect(reg)
        if phase == "polling":
            answer(reg, 202, rid, {"operationId": "op", "status": "assigning"}, retry=1)
            poll_rid(reg)
    final = outcome(reg.handle(DpsTimerFired(TIMEOUT_TIMER)))
    assert isinstance(final, Failed) and isinstance(final.error, ProvisioningError)
    assert final.error.status == 408
    assert str(final.error).endswith(f"no answer while {phase} within 5 s")


def test_a_subscription_before_connack_or_twice_is_ignored() -> None:
    reg = machine()
    assert reg.handle(DpsSubscribed((1,))) == []
    reg.handle(DpsConnected())
    registered_after_connect(reg)
    assert reg.handle(DpsSubscribed((1,))) == []
    assert reg.phase is Phase.REGISTERING


@pytest.mark.parametrize("granted", [(), (2,), (1, 0x80)])
def test_a_subscription_not_granted_at_qos_0_or_1_fails(granted: tuple[int, ...]) -> None:
    reg = machine()
    reg.handle(DpsConnected())
    final = outcome(reg.handle(DpsSubscribed(granted)))
    assert isinstance(final, Failed)
    assert str(final.error) == f"DPS refused the subscription ({granted})"


def test_qos_0_is_an_acceptable_grant() -> None:
    reg = machine()
    reg.handle(DpsConnected())
    assert RegistrationSent() in reg.handle(DpsSubscribed((0,)))


def test_assigned_uses_the_best_timestamp_available() -> None:
    def assigned(state: dict[str, object]) -> Assignment:
        reg = machine(fallback_time_utc="2026-12-01T09:00:00Z")
        rid = registered(reg)
        final = outcome(answer(reg, 200, rid, {"status": "assigned", "registrationState": state}))
        assert isinstance(final, Assigned)
        return final.assignment

    base = {"assignedHub": "h", "deviceId": "d", "status": "assigned"}
    assert (
        assigned({**base, "lastUpdatedDateTimeUtc": "L", "createdDateTimeUtc": "C"}).provisioned_at
        == "L"
    )
    assert assigned({**base, "createdDateTimeUtc": "C"}).provisioned_at == "C"
    assert assigned(base).provisioned_at == "2026-12-01T09:00:00Z"
    assert assigned(base) == Assignment("h", "d", "2026-12-01T09:00:00Z", None, None)


def test_assigned_from_the_state_status_alone() -> None:
    reg = machine()
    rid = registered(reg)
    state = {"assignedHub": "h", "deviceId": "d", "status": "assigned"}
    final = outcome(answer(reg, 200, rid, {"registrationState": state}))
    assert isinstance(final, Assigned)
    assert reg.handle(DpsTimerFired(RETRY_TIMER)) == []


@pytest.mark.parametrize(
    "state", [{"assignedHub": "h"}, {"deviceId": "d"}, {"assignedHub": "", "deviceId": "d"}]
)
def test_assigned_without_hub_or_device_id(state: dict[str, object]) -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(answer(reg, 200, rid, {"status": "assigned", "registrationState": state}))
    assert isinstance(final, Failed)
    assert str(final.error) == "DPS: 'assigned' without assignedHub/deviceId"


@pytest.mark.parametrize(
    ("body", "message", "rejected"),
    [
        ({"status": "failed", "registrationState": {"errorMessage": "no enrollment"}},
         "registration failed: no enrollment", True),
        ({"status": "disabled"}, "registration disabled", True),
        ({"status": "disabled", "message": "off"}, "registration disabled: off", True),
        ({"status": "weird"}, "registration weird", False),
    ],
)  # fmt: skip
def test_final_statuses_other_than_assigned(
    body: dict[str, object], message: str, rejected: bool
) -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(answer(reg, 200, rid, body))
    assert isinstance(final, Failed) and isinstance(final.error, ProvisioningError)
    assert final.error.status == 200
    assert str(final.error).endswith(message)
    assert final.rejected is rejected


def test_an_error_status_without_a_message_says_the_status() -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(answer(reg, 503, rid, None, retry=4))
    assert isinstance(final, Failed) and isinstance(final.error, ProvisioningError)
    assert str(final.error).endswith("DPS answered 503")
    assert final.retry_after_s == 4.0 and final.error.retry_after_s == 4.0
    assert not final.rejected


def test_register_then_poll_rids_increase() -> None:
    reg = machine()
    rid = registered(reg)
    assert rid == "1"
    answer(reg, 202, rid, {"operationId": "op", "status": "assigning"}, retry=1)
    assert poll_rid(reg) == "2"


def issuing_machine() -> Registration:
    return Registration(
        "dev-1", None, rng=random.Random(1), response_timeout_s=5.0, default_poll_s=2.0, csr="Q1NS"
    )


def test_a_csr_goes_into_the_register_request() -> None:
    reg = issuing_machine()
    reg.handle(DpsConnected())
    publish = reg.handle(DpsSubscribed((1,)))[0]
    assert isinstance(publish, Publish)
    assert publish.payload == b'{"registrationId":"dev-1","payload":null,"csr":"Q1NS"}'
    assert reg.csr == "Q1NS"


def test_the_issued_chain_comes_with_the_assignment() -> None:
    reg = issuing_machine()
    rid = registered_after_connect_of(reg)
    state = {**ASSIGNED_STATE, "issuedCertificateChain": ["TEVBRg==", "Q0E="]}
    actions = answer(reg, 200, rid, {"status": "assigned", "registrationState": state})
    final = outcome(actions)
    assert isinstance(final, Assigned) and final.issued_chain == ("TEVBRg==", "Q0E=")
    assert actions[:2] == [CancelTimer(RETRY_TIMER), CancelTimer(TIMEOUT_TIMER)]


def test_assigned_without_the_certificate_asked_for_is_a_protocol_error() -> None:
    reg = issuing_machine()
    rid = registered_after_connect_of(reg)
    final = outcome(
        answer(reg, 200, rid, {"status": "assigned", "registrationState": ASSIGNED_STATE})
    )
    assert isinstance(final, Failed) and isinstance(final.error, ProtocolError)
    assert str(final.error) == "DPS assigned the device but issued no certificate for the CSR"


def test_without_a_csr_no_chain_is_expected() -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(
        answer(reg, 200, rid, {"status": "assigned", "registrationState": ASSIGNED_STATE})
    )
    assert isinstance(final, Assigned) and final.issued_chain == ()


@pytest.mark.parametrize("chain", ["x", [1], [""], ["ok", None]])
def test_an_issued_chain_must_be_a_list_of_strings(chain: object) -> None:
    body = wire.encode_json({"registrationState": {"issuedCertificateChain": chain}})
    with pytest.raises(ProtocolError) as info:
        wire.parse_dps_response("$dps/registrations/res/200/?$rid=1", body)
    assert str(info.value) == (
        "DPS response registrationState: 'issuedCertificateChain' is not a list of strings"
    )


def registered_after_connect_of(reg: Registration) -> str:
    reg.handle(DpsConnected())
    return registered_after_connect(reg)


def test_the_poll_request_is_qos_1_with_an_empty_body() -> None:
    reg = machine()
    rid = registered(reg)
    answer(reg, 202, rid, {"operationId": "op-2", "status": "assigning"}, retry=1)
    publish, timer = reg.handle(DpsTimerFired(RETRY_TIMER))
    assert publish == Publish(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=op-2", b"", 1
    )
    assert timer == StartTimer(TIMEOUT_TIMER, 5.0)


def test_a_final_answer_with_only_the_state_status() -> None:
    reg = machine()
    rid = registered(reg)
    final = outcome(answer(reg, 200, rid, {"registrationState": {"status": "disabled"}}))
    assert isinstance(final, Failed) and final.rejected
    assert str(final.error).endswith("registration disabled")
    reg2 = machine()
    rid2 = registered(reg2)
    none = outcome(answer(reg2, 200, rid2, {}))
    assert isinstance(none, Failed) and str(none.error).endswith("registration None")


def test_a_failure_detail_keeps_its_last_character() -> None:
    reg = machine()
    rid = registered(reg)
    body = {"status": "failed", "registrationState": {"errorMessage": "code X"}}
    final = outcome(answer(reg, 200, rid, body))
    assert str(final.error if isinstance(final, Failed) else "").endswith(
        "registration failed: code X"
    )


def test_connection_failures_say_which_service() -> None:
    refused = outcome(machine().handle(DpsConnectRefused(5)))
    assert isinstance(refused, Failed) and str(refused.error).startswith(
        "DPS refused the connection (CONNACK 5): "
    )
    lost = outcome(machine().handle(DpsConnectionLost("reset by peer")))
    assert isinstance(lost, Failed) and str(lost.error) == "DPS connection lost: reset by peer"


def test_assigned_without_timestamps_or_fallback_has_an_empty_time() -> None:
    reg = Registration("dev-1", None, rng=random.Random(1))
    reg.handle(DpsConnected())
    publish = reg.handle(DpsSubscribed((1,)))[0]
    assert isinstance(publish, Publish)
    state = {"assignedHub": "h", "deviceId": "d", "status": "assigned"}
    final = outcome(answer(reg, 200, "1", {"status": "assigned", "registrationState": state}))
    assert isinstance(final, Assigned) and final.assignment.provisioned_at == ""


def test_the_default_throttle_policy_is_one_second_base_sixty_cap() -> None:
    reg = Registration("dev-1", None, rng=random.Random(8), max_throttled=20)
    expected = Backoff(BackoffPolicy(1.0, 60.0), random.Random(8))
    reg.handle(DpsConnected())
    rid = "1"
    reg.handle(DpsSubscribed((1,)))
    for n in range(10):
        retry = 0 if n % 2 else None  # with retry-after 0, and without (full jitter)
        actions = answer(reg, 429, rid, None, retry=retry)
        timer = actions[1]
        assert isinstance(timer, StartTimer)
        assert timer.delay_s == expected.next_delay_s(None if retry is None else 0.0)
        publish = reg.handle(DpsTimerFired(RETRY_TIMER))[0]
        assert isinstance(publish, Publish)
        rid = publish.topic.rsplit("=", 1)[1]
