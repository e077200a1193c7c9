"""Hub certificate renewal core: exact failures and their transience (issue #14)."""

from __future__ import annotations

import base64
import json

import pytest

from agent.core.actions import CancelTimer, Publish, StartTimer, Subscribe
from agent.core.credentials import (
    CREDENTIALS_FILTER,
    TIMER,
    CertificateIssued,
    HubRenewal,
    RenewalFailed,
)

DER = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()


def reply(status: object, body: bytes, rid: str = "r-1") -> tuple[str, bytes]:
    return f"$iothub/credentials/res/{status}/?$rid={rid}", body


def failed(actions: list[object]) -> RenewalFailed:
    assert actions[0] == CancelTimer(TIMER)
    final = actions[1]
    assert isinstance(final, RenewalFailed)
    return final


def test_start_exactly_and_the_default_timeout() -> None:
    renewal = HubRenewal("dev-1", "CSR", "r-1")
    assert renewal.done is False
    sub, pub, timer = renewal.start()
    assert sub == Subscribe(CREDENTIALS_FILTER, 1)
    assert isinstance(pub, Publish) and pub.qos == 1
    assert timer == StartTimer(TIMER, 120.0)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        ("2x0", b"{}", "malformed answer on '$iothub/credentials/res/2x0/?$rid=r-1'"),
        (200, b"[1]", "the answer is not a JSON object"),
        (200, b'{"certificates": []}', "200 without certificates"),
        (200, b'{"certificates": [""]}', "200 without certificates"),
        (200, b'{"certificates": [5]}', "200 without certificates"),
    ],
)
def test_malformed_answers_are_transient_failures(
    status: object, body: bytes, message: str
) -> None:
    renewal = HubRenewal("dev-1", "CSR", "r-1")
    final = failed(renewal.on_message(*reply(status, body)))
    assert (final.code, final.message, final.transient) == (None, message, True)
    assert renewal.done is True
    assert renewal.on_message(*reply(200, json.dumps({"certificates": [DER]}).encode())) == []


def test_an_empty_body_is_an_empty_object() -> None:
    renewal = HubRenewal("dev-1", "CSR", "r-1")
    assert renewal.on_message(*reply(202, b"  ")) == []
    assert renewal.done is False


@pytest.mark.parametrize(
    ("status", "transient"),
    [(429, True), (430, False), (500, True), (501, False), (503, True), (400, False)],
)
def test_statuses_without_a_code(status: int, transient: bool) -> None:
    final = failed(HubRenewal("d", "c", "r-1").on_message(*reply(status, b'{"errorCode": true}')))
    assert final.code is None and final.transient is transient


def test_the_request_id_is_matched_in_the_query() -> None:
    renewal = HubRenewal("d", "c", "r-1")
    assert renewal.on_message("$iothub/credentials/res/200/?$rid=r-1?x", b"{}") == []  # rid 'r-1?x'
    assert renewal.on_message("$iothub/credentials/res/200/?$rid=", b"{}") == []
    issued = renewal.on_message(*reply(200, json.dumps({"certificates": [f" {DER}\n"]}).encode()))
    assert issued[-1] == CertificateIssued((DER,))


def test_no_answer_in_time() -> None:
    renewal = HubRenewal("d", "c", "r-1", timeout_s=7)
    final = failed(renewal.on_timer(TIMER))
    assert (final.code, final.message, final.transient) == (None, "no answer within 7 s", True)
