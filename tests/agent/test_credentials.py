"""The hub renewal core (agent.core.credentials): requests out, answers in, no I/O."""

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


def answer(status: int, body: object, rid: str = "r-1") -> tuple[str, bytes]:
    return f"$iothub/credentials/res/{status}/?$rid={rid}", json.dumps(body).encode()


def test_start_subscribes_publishes_and_arms_the_timeout() -> None:
    renewal = HubRenewal("dev-1", "CSR", "r-1", timeout_s=9)
    sub, pub, timer = renewal.start()
    assert sub == Subscribe(CREDENTIALS_FILTER, 1)
    assert isinstance(pub, Publish)
    assert pub.topic == "$iothub/credentials/POST/issueCertificate/?$rid=r-1"
    assert json.loads(pub.payload) == {"id": "dev-1", "csr": "CSR", "replace": "*"}
    assert timer == StartTimer(TIMER, 9)


def test_202_waits_and_200_issues_der_or_pem() -> None:
    renewal = HubRenewal("dev-1", "CSR", "r-1")
    assert renewal.on_message(*answer(202, {"correlationId": "c"})) == []
    pem = f"-----BEGIN CERTIFICATE-----\n{DER}\n-----END CERTIFICATE-----\n"
    done = renewal.on_message(*answer(200, {"certificates": [pem, DER]}))
    assert done == [CancelTimer(TIMER), CertificateIssued((DER, DER))]
    assert renewal.on_message(*answer(200, {"certificates": [DER]})) == []  # done already


def test_answers_for_another_request_are_ignored() -> None:
    renewal = HubRenewal("dev-1", "CSR", "r-1")
    assert renewal.on_message(*answer(200, {"certificates": [DER]}, rid="other")) == []
    assert renewal.on_message("$iothub/twin/res/200/?$rid=r-1", b"{}") == []


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (400, 400040, False),
        (409, 409005, False),
        (412, 412001, False),
        (429, 429002, True),
        (429, 429003, True),
        (503, 503001, True),
        (503, None, True),
        (400, None, False),
    ],
)
def test_errors_are_final_or_transient_as_documented(
    status: int, code: int | None, transient: bool
) -> None:
    renewal = HubRenewal("dev-1", "CSR", "r-1")
    body = {"message": "no"} if code is None else {"errorCode": code, "message": "no"}
    out = renewal.on_message(*answer(status, body))
    assert out == [CancelTimer(TIMER), RenewalFailed(code, "no", transient)]


def test_malformed_answers_and_the_timeout_are_transient_failures() -> None:
    for topic, payload in (
        ("$iothub/credentials/res/abc/?$rid=r-1", b"{}"),
        ("$iothub/credentials/res/200/?$rid=r-1", b"not json"),
        ("$iothub/credentials/res/200/?$rid=r-1", b'{"certificates": []}'),
    ):
        failed = HubRenewal("dev-1", "CSR", "r-1").on_message(topic, payload)[-1]
        assert isinstance(failed, RenewalFailed) and failed.transient
    renewal = HubRenewal("dev-1", "CSR", "r-1", timeout_s=5)
    assert renewal.on_timer("other") == []
    failed = renewal.on_timer(TIMER)[-1]
    assert isinstance(failed, RenewalFailed) and failed.transient and failed.code is None
