"""The renewal endpoint's one-request-at-a-time rules, driven without sockets.

:class:`~devcloud.credentials.RenewalService` on an event loop, its answers collected
from the ``deliver`` callback. The wire tests are in ``test_issuance.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cryptography.hazmat.primitives import serialization

from devcloud.credentials import RenewalService
from devcloud.issuance import Issuer
from devcloud.model import CredentialPolicy, EnrollmentGroup, Registration
from devcloud.pki import PKI
from devcloud.registry import Registry
from devcloud.store import MemoryStore
from tests.support.csr import b64, csr_der, ec_key
from tests.support.devcloud import pki_fixture  # noqa: F401

DEVICE = "dev-renew"


def service(pki: PKI, delay_s: float) -> tuple[RenewalService, list[tuple[int, str, Any]]]:
    registry = Registry(["hub1"], MemoryStore())
    registry.put_policy(CredentialPolicy("p", validity_days=2))
    pem = pki.intermediate.public_bytes(serialization.Encoding.PEM).decode()
    registry.put_group(EnrollmentGroup("g", pem, credential_policy="p"))
    registry.create_device("hub1", DEVICE, registration_id=DEVICE)
    now = registry.now()
    registry.put_registration(
        Registration(
            DEVICE, DEVICE, "hub1", "assigned", "initialAssignment", now, now, "e", "group:g"
        )
    )
    answers: list[tuple[int, str, Any]] = []

    def deliver(device_id: str, topic: str, payload: bytes) -> None:
        assert device_id == DEVICE
        status = int(topic.split("/")[3])
        answers.append((status, topic.rsplit("=", 1)[1], json.loads(payload)))

    renewals = RenewalService("hub1", registry, Issuer(pki, registry), deliver, delay_s=delay_s)
    return renewals, answers


def request(renewals: RenewalService, rid: str, **extra: Any) -> None:
    body = {"id": DEVICE, "csr": b64(csr_der(ec_key(), DEVICE)), **extra}
    renewals.request(
        DEVICE, f"$iothub/credentials/POST/issueCertificate/?$rid={rid}", json.dumps(body).encode()
    )


async def settle(renewals: RenewalService, answers: list[tuple[int, str, Any]], count: int) -> None:
    for _ in range(500):  # bounded: the service answers after its delay
        if len(answers) >= count and renewals.pending_rid(DEVICE) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {answers}")


def test_a_second_request_without_replace_conflicts(pki: PKI) -> None:
    async def run() -> None:
        renewals, answers = service(pki, delay_s=0.2)
        request(renewals, "first")
        request(renewals, "second")
        await settle(renewals, answers, 3)
        assert [(s, r) for s, r, _ in answers] == [(202, "first"), (409, "second"), (200, "first")]
        conflict = answers[1][2]
        assert conflict["errorCode"] == 409005
        assert conflict["info"]["requestId"] == "first"
        assert conflict["info"]["correlationId"] == answers[0][2]["correlationId"]

    asyncio.run(run())


def test_replace_star_or_the_pending_rid_drops_the_pending_request(pki: PKI) -> None:
    async def run() -> None:
        for replace in ("*", "first"):
            renewals, answers = service(pki, delay_s=0.2)
            request(renewals, "first")
            request(renewals, "second", replace=replace)
            await settle(renewals, answers, 3)
            assert [(s, r) for s, r, _ in answers] == [
                (202, "first"),
                (202, "second"),
                (200, "second"),
            ], replace

    asyncio.run(run())


def test_replace_naming_another_request_is_412(pki: PKI) -> None:
    async def run() -> None:
        renewals, answers = service(pki, delay_s=0.2)
        request(renewals, "first")
        request(renewals, "second", replace="not-that-one")
        await settle(renewals, answers, 3)
        assert [(s, r) for s, r, _ in answers] == [(202, "first"), (412, "second"), (200, "first")]
        assert answers[1][2]["errorCode"] == 412001

    asyncio.run(run())


def test_a_deleted_device_gets_no_late_answer(pki: PKI) -> None:
    async def run() -> None:
        renewals, answers = service(pki, delay_s=0.05)
        request(renewals, "first")
        renewals.registry.delete_device("hub1", DEVICE)
        renewals.forget(DEVICE)
        await asyncio.sleep(0.2)  # longer than the delay: an answer would have come by now
        assert [(s, r) for s, r, _ in answers] == [(202, "first")]

    asyncio.run(run())
