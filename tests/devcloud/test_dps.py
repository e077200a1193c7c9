"""DPS service logic, driven through its Endpoint/DeviceSession contract with a fake connection.

No sockets here: the MQTT server is replaced by :class:`RecordingConnection`. The wire
tests over real TLS live in ``test_app.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devcloud.allocation import AllocationRequest, AllocationResult, hashed
from devcloud.assignment import Assigner
from devcloud.dps import DpsEndpoint, DpsSession, Provisioner, RateLimiter
from devcloud.model import (
    AllocationPolicy,
    EnrollmentGroup,
    IndividualEnrollment,
    InitialTwin,
    ReprovisionPolicy,
)
from devcloud.mqtt.endpoint import ProtocolViolation
from devcloud.pki import PKI
from devcloud.registry import Registry
from devcloud.render import HubNames
from tests.support.devcloud import (
    RecordingConnection,
    chain_of,
    connect_request,
    pki_fixture,  # noqa: F401
)

SCOPE = "0ne00000DEV"
HOSTS = {"hub1": "127.0.0.3", "hub2": "127.0.0.4", "hub3": "127.0.0.5"}
REGISTER = "$dps/registrations/PUT/iotdps-register/?$rid={rid}"
POLL = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def username(regid: str, scope: str = SCOPE) -> str:
    return f"{scope}/registrations/{regid}/api-version=2019-03-31&ClientVersion=test"


@dataclass
class Dps:
    """A provisioner with a registry, three hubs and the default group on the intermediate."""

    pki: PKI
    registry: Registry
    provisioner: Provisioner
    endpoint: DpsEndpoint

    def connect(
        self, regid: str, chain: list[x509.Certificate] | None = None
    ) -> tuple[DpsSession, RecordingConnection]:
        if chain is None:
            chain = chain_of(self.pki.issue_device(regid), self.pki)
        conn = RecordingConnection(regid)
        code, session = self.endpoint.authenticate(
            connect_request(regid, username(regid), chain), conn
        )
        assert code == 0
        assert isinstance(session, DpsSession)
        return session, conn

    async def register(
        self, regid: str, payload: Any = None, chain: list[x509.Certificate] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Register, wait for the assignment, poll; return the final topic and body."""
        session, conn = self.connect(regid, chain)
        body = json.dumps({"registrationId": regid, "payload": payload}).encode()
        session.on_publish(REGISTER.format(rid=1), body, 1)
        topic, answer, _ = conn.published[-1]
        if not topic.startswith("$dps/registrations/res/202/"):
            return topic, json.loads(answer)
        op = json.loads(answer)["operationId"]
        await self.provisioner.settle()
        session.on_publish(POLL.format(rid=2, op=op), b"", 1)
        return conn.published[-1][0], conn.last_json()


def make_dps(pki: PKI, *, delay_s: float = 0.0, rate: float | None = None) -> Dps:
    registry = Registry(tuple(HOSTS))
    assigner = Assigner(registry, HubNames(HOSTS))
    provisioner = Provisioner(
        registry,
        assigner,
        id_scope=SCOPE,
        assignment_delay_s=delay_s,
        registrations_per_second=rate,
        rng=random.Random(7),
        is_revoked=pki.is_revoked,
    )
    registry.put_group(EnrollmentGroup("default", pem(pki.intermediate)))
    return Dps(pki, registry, provisioner, DpsEndpoint(provisioner))


def regid() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


# -- CONNECT ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ok", 0),
        ("wrong-scope", 5),
        ("cn-mismatch", 5),
        ("client-id-mismatch", 5),
        ("no-certificate", 5),
        ("no-username", 4),
        ("garbage-username", 4),
    ],
)
def test_connect(pki: PKI, case: str, expected: int) -> None:
    dps = make_dps(pki)
    rid = regid()
    issued = pki.issue_device(rid, cn="someone-else" if case == "cn-mismatch" else None)
    chain = [] if case == "no-certificate" else chain_of(issued, pki)
    user: str | None = username(rid, "0ne99999XXX" if case == "wrong-scope" else SCOPE)
    if case == "client-id-mismatch":
        user = username("another-id")
    elif case == "no-username":
        user = None
    elif case == "garbage-username":
        user = "nonsense"
    code, session = dps.endpoint.authenticate(
        connect_request(rid, user, chain), RecordingConnection(rid)
    )
    assert code == expected
    assert (session is not None) == (expected == 0)


def test_only_the_response_filter_is_granted(pki: PKI) -> None:
    session, _ = make_dps(pki).connect(regid())
    assert session.on_subscribe("$dps/registrations/res/#", 1) == 1
    assert session.on_subscribe("$dps/registrations/res/#", 0) == 0
    for refused in ("#", "$dps/#", "$iothub/twin/res/#", "$dps/registrations/res/+"):
        assert session.on_subscribe(refused, 1) == 0x80


# -- registration flow -------------------------------------------------------------------------


def test_register_202_poll_assigning_then_200_assigned(pki: PKI) -> None:
    async def scenario() -> None:
        dps = make_dps(pki, delay_s=0.05)
        rid = regid()
        session, conn = dps.connect(rid)
        body = json.dumps({"registrationId": rid, "payload": {"model": "pi4"}}).encode()
        session.on_publish(REGISTER.format(rid="r1"), body, 1)
        topic, payload, qos = conn.published[-1]
        assert topic == "$dps/registrations/res/202/?$rid=r1&retry-after=1"
        assert qos == 1
        accepted = json.loads(payload)
        assert accepted["status"] == "assigning"
        op = accepted["operationId"]
        session.on_publish(POLL.format(rid="r2", op=op), b"", 1)
        assert conn.published[-1][0] == "$dps/registrations/res/202/?$rid=r2&retry-after=1"
        assert conn.last_json() == {"operationId": op, "status": "assigning"}
        await dps.provisioner.settle()
        session.on_publish(POLL.format(rid="r3", op=op), b"", 1)
        assert conn.published[-1][0] == "$dps/registrations/res/200/?$rid=r3"
        answer = conn.last_json()
        state = answer["registrationState"]
        assert answer["status"] == "assigned" and answer["operationId"] == op
        expected_hub = {v: k for k, v in HOSTS.items()}[hashed(rid, list(HOSTS.values()))]
        assert state["assignedHub"] == HOSTS[expected_hub]
        assert state["deviceId"] == rid and state["registrationId"] == rid
        assert state["status"] == "assigned" and state["substatus"] == "initialAssignment"
        assert state["etag"] and state["createdDateTimeUtc"] and state["lastUpdatedDateTimeUtc"]
        device = dps.registry.get_device(expected_hub, rid)
        assert device.enabled and device.registration_id == rid
        assert dps.registry.get_registration(rid).assigned_hub == expected_hub
        assert dps.registry.stats()[rid] == {"attempts": 1, "assignments": 1}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"registrationId": "someone-else"}', 400),
        (b"", 400),
        (b"\xff\xfe", 400),
    ],
)
def test_bad_register_bodies_get_400(pki: PKI, body: bytes, status: int) -> None:
    async def scenario() -> None:
        session, conn = make_dps(pki).connect(regid())
        session.on_publish(REGISTER.format(rid="x"), body, 1)
        assert conn.published[-1][0] == f"$dps/registrations/res/{status}/?$rid=x"
        error = conn.last_json()
        assert error["errorCode"] == 400004
        assert error["message"] and error["trackingId"] and error["timestampUtc"]

    asyncio.run(scenario())


def test_unknown_ca_gets_404(pki: PKI, tmp_path: Path) -> None:
    rogue = PKI.create(tmp_path / "rogue", name="rogue")

    async def scenario() -> None:
        dps = make_dps(pki)
        rid = regid()
        topic, body = await dps.register(rid, chain=chain_of(rogue.issue_device(rid), rogue))
        assert topic.startswith("$dps/registrations/res/404/")
        assert body["errorCode"] == 404201 and rid in body["message"]
        assert dps.registry.devices() == []

    asyncio.run(scenario())


def test_disabled_enrollments_get_401(pki: PKI) -> None:
    async def scenario() -> None:
        dps = make_dps(pki)
        dps.registry.put_group(EnrollmentGroup("default", pem(pki.intermediate), enabled=False))
        topic, body = await dps.register(regid())
        assert topic.startswith("$dps/registrations/res/401/")
        assert "disabled" in body["message"]
        # A disabled individual enrollment blocks the device even though a group takes it.
        dps.registry.put_group(EnrollmentGroup("default", pem(pki.intermediate)))
        rid = regid()
        dps.registry.put_enrollment(IndividualEnrollment(rid, enabled=False))
        topic, _ = await dps.register(rid)
        assert topic.startswith("$dps/registrations/res/401/")
        # A revoked leaf (CONNECT is accepted, as Azure's TLS would be) gets 401 too.
        rid = regid()
        issued = pki.issue_device(rid)
        pki.revoke(issued.cert)
        topic, body = await dps.register(rid, chain=chain_of(issued, pki))
        assert topic.startswith("$dps/registrations/res/401/")
        assert (body["errorCode"], body["message"]) == (401002, "the device certificate is revoked")
        assert dps.registry.registration(rid) is None

    asyncio.run(scenario())


def test_individual_enrollment_wins_and_checks_the_thumbprint(pki: PKI) -> None:
    async def scenario() -> None:
        dps = make_dps(pki)
        rid = regid()
        issued = pki.issue_device(rid)
        dps.registry.put_enrollment(
            IndividualEnrollment(
                rid,
                thumbprints=(issued.thumbprint,),
                device_id=f"{rid}-dev",
                allocation=AllocationPolicy.STATIC,
                iot_hubs=("hub3",),
                initial_twin=InitialTwin({"mode": "individual"}),
            )
        )
        topic, body = await dps.register(rid, chain=chain_of(issued, pki))
        assert topic.startswith("$dps/registrations/res/200/")
        assert body["registrationState"]["assignedHub"] == HOSTS["hub3"]
        assert body["registrationState"]["deviceId"] == f"{rid}-dev"
        assert dps.registry.get_twin("hub3", f"{rid}-dev").desired == {"mode": "individual"}
        assert dps.registry.get_registration(rid).enrollment == f"individual:{rid}"
        # Another certificate with the same CN does not match the enrolled thumbprint.
        other = pki.issue_device(rid)
        topic, body = await dps.register(rid, chain=chain_of(other, pki))
        assert topic.startswith("$dps/registrations/res/401/")

    asyncio.run(scenario())


def test_intermediate_group_beats_root_group(pki: PKI) -> None:
    async def scenario() -> None:
        dps = make_dps(pki)
        dps.registry.delete_group("default")
        dps.registry.put_group(
            EnrollmentGroup(
                "a-root", pem(pki.root), allocation=AllocationPolicy.STATIC, iot_hubs=("hub1",)
            )
        )
        dps.registry.put_group(
            EnrollmentGroup(
                "z-inter",
                pem(pki.intermediate),
                allocation=AllocationPolicy.STATIC,
                iot_hubs=("hub2",),
            )
        )
        rid = regid()
        _, body = await dps.register(rid)
        assert body["registrationState"]["assignedHub"] == HOSTS["hub2"]
        # A device signed directly by the root falls under the root's group.
        rid2 = regid()
        direct = pki.issue_device(rid2, signer="root")
        _, body = await dps.register(rid2, chain=chain_of(direct, pki))
        assert body["registrationState"]["assignedHub"] == HOSTS["hub1"]
        # Leaf-only chain: the group CA that directly signed it still matches.
        rid3 = regid()
        leaf = pki.issue_device(rid3).cert
        _, body = await dps.register(rid3, chain=[leaf])
        assert body["registrationState"]["assignedHub"] == HOSTS["hub2"]
        # Without the intermediate's group, the root signed the top of [leaf, intermediate]
        # (the chain devcloud's TLS verifies: it trusts the intermediate itself).
        dps.registry.delete_group("z-inter")
        rid4 = regid()
        issued = pki.issue_device(rid4)
        _, body = await dps.register(rid4, chain=[issued.cert, pki.intermediate])
        assert body["registrationState"]["assignedHub"] == HOSTS["hub1"]

    asyncio.run(scenario())


def test_throttling_answers_429_with_retry_after(pki: PKI) -> None:
    now = [100.0]

    async def scenario() -> None:
        dps = make_dps(pki, rate=2.0)
        dps.provisioner.limiter = RateLimiter(2.0, clock=lambda: now[0])
        session, conn = dps.connect(regid())
        rid = session.registration_id
        body = json.dumps({"registrationId": rid}).encode()
        statuses = []
        for n in range(3):
            session.on_publish(REGISTER.format(rid=n), body, 1)
            statuses.append(conn.published[-1][0].split("/")[3])
        assert statuses == ["202", "202", "429"]
        assert conn.published[-1][0] == "$dps/registrations/res/429/?$rid=2&retry-after=1"
        assert conn.last_json()["errorCode"] == 429001
        now[0] += 0.5  # one token back at 2/s
        session.on_publish(REGISTER.format(rid=9), body, 1)
        assert conn.published[-1][0].startswith("$dps/registrations/res/202/")
        await dps.provisioner.settle()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("rate", "elapsed", "expected"),
    [(None, 0.0, None), (1.0, 0.0, 1), (1.0, 1.0, None), (0.1, 0.0, 10), (0.1, 5.0, 5)],
)
def test_rate_limiter_second_request(
    rate: float | None, elapsed: float, expected: int | None
) -> None:
    now = [0.0]
    limiter = RateLimiter(rate, clock=lambda: now[0])
    assert limiter.acquire() is None
    now[0] += elapsed
    assert limiter.acquire() == expected


def test_unknown_or_foreign_operation_gets_404(pki: PKI) -> None:
    async def scenario() -> None:
        dps = make_dps(pki)
        a, conn_a = dps.connect(regid())
        b, conn_b = dps.connect(regid())
        a.on_publish(
            REGISTER.format(rid=1), json.dumps({"registrationId": a.registration_id}).encode(), 1
        )
        op = conn_a.last_json()["operationId"]
        b.on_publish(POLL.format(rid=5, op=op), b"", 1)
        assert conn_b.published[-1][0] == "$dps/registrations/res/404/?$rid=5"
        b.on_publish(POLL.format(rid=6, op="nope"), b"", 1)
        assert conn_b.published[-1][0] == "$dps/registrations/res/404/?$rid=6"
        await dps.provisioner.settle()

    asyncio.run(scenario())


def test_other_topics_are_protocol_violations(pki: PKI) -> None:
    session, conn = make_dps(pki).connect(regid())
    for topic in ("devices/x/messages/events/", "$dps/registrations/DELETE/", "$iothub/twin/GET/"):
        with pytest.raises(ProtocolViolation):
            session.on_publish(topic, b"{}", 1)
    assert conn.published == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    topic=st.one_of(
        st.text(max_size=80),
        st.sampled_from([REGISTER.format(rid=""), POLL.format(rid="1", op="")]).flatmap(
            lambda prefix: st.text(max_size=40).map(lambda s: prefix + s)
        ),
    ),
    payload=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_garbage_gets_a_protocol_answer_or_a_violation(
    pki: PKI,
    topic: str,
    payload: bytes,
) -> None:
    async def scenario() -> None:
        session, conn = GARBAGE_DPS.connect("garbage-device", GARBAGE_CHAIN)
        try:
            session.on_publish(topic, payload, 1)
        except ProtocolViolation:
            assert conn.published == []
            return
        assert len(conn.published) == 1
        assert conn.published[0][0].startswith("$dps/registrations/res/")
        json.loads(conn.published[0][1])
        await GARBAGE_DPS.provisioner.drain()

    asyncio.run(scenario())


GARBAGE_DPS: Dps
GARBAGE_CHAIN: list[x509.Certificate]


@pytest.fixture(autouse=True, scope="module")
def _garbage_dps(pki: PKI) -> Iterator[None]:
    global GARBAGE_DPS, GARBAGE_CHAIN
    GARBAGE_DPS = make_dps(pki)
    GARBAGE_CHAIN = chain_of(pki.issue_device("garbage-device"), pki)
    yield


# -- allocation policies -------------------------------------------------------------------


def test_hashed_is_stable_spread_and_order_independent() -> None:
    hubs = ["h-a", "h-b", "h-c"]
    picks = {hashed(f"device-{n}", hubs) for n in range(60)}
    assert picks == set(hubs)
    for n in range(20):
        assert hashed(f"device-{n}", hubs) == hashed(f"device-{n}", list(reversed(hubs)))
    # Pinned values: a salted hash() would change between interpreter runs.
    assert [hashed(f"device-{n}", hubs) for n in range(6)] == [
        "h-b",
        "h-c",
        "h-a",
        "h-b",
        "h-c",
        "h-c",
    ]


def test_static_and_custom_callable_allocation(pki: PKI) -> None:
    seen: list[AllocationRequest] = []

    def allocator(request: AllocationRequest) -> AllocationResult:
        seen.append(request)
        return AllocationResult(
            HOSTS["hub3"],
            initial_twin={"tags": {"by": "custom"}, "properties": {"desired": {"c": 1}}},
            payload={"hello": request.payload},
        )

    async def scenario() -> None:
        dps = make_dps(pki)
        dps.registry.put_group(
            EnrollmentGroup(
                "default",
                pem(pki.intermediate),
                allocation=AllocationPolicy.STATIC,
                iot_hubs=("hub2", "hub1"),
            )
        )
        _, body = await dps.register(regid())
        assert body["registrationState"]["assignedHub"] == HOSTS["hub2"]
        dps.registry.put_group(
            EnrollmentGroup("default", pem(pki.intermediate), allocation=AllocationPolicy.CUSTOM)
        )
        dps.provisioner.assigner.custom_allocator = allocator
        rid = regid()
        _, body = await dps.register(rid, payload={"model": "x"})
        state = body["registrationState"]
        assert state["assignedHub"] == HOSTS["hub3"]
        assert state["payload"] == {"hello": {"model": "x"}}
        twin = dps.registry.get_twin("hub3", rid)
        assert twin.desired == {"c": 1} and twin.tags == {"by": "custom"}
        request = seen[-1]
        assert request.registration_id == rid
        assert sorted(request.linked_hubs) == sorted(HOSTS.values())
        assert request.enrollment_kind == "enrollmentGroup"
        assert request.x509["subjectName"] == f"CN={rid}"
        assert request.current_hub is None

    asyncio.run(scenario())


def test_custom_allocation_failures_end_in_status_failed(pki: PKI) -> None:
    async def scenario() -> None:
        dps = make_dps(pki)
        dps.registry.put_group(
            EnrollmentGroup(
                "default",
                pem(pki.intermediate),
                allocation=AllocationPolicy.CUSTOM,
                iot_hubs=("hub1",),
            )
        )
        topic, body = await dps.register(regid())  # no allocator registered
        assert topic.startswith("$dps/registrations/res/200/")
        assert body["status"] == "failed"
        assert body["registrationState"]["errorCode"] == 400207
        dps.provisioner.assigner.custom_allocator = lambda r: AllocationResult(HOSTS["hub2"])
        _, body = await dps.register(regid())  # hub2 is not linked
        assert body["status"] == "failed"
        assert "not one of the linked hubs" in body["registrationState"]["errorMessage"]

        def boom(_r: AllocationRequest) -> AllocationResult:
            raise RuntimeError("allocator bug")

        dps.provisioner.assigner.custom_allocator = boom
        _, body = await dps.register(regid())
        assert (
            body["status"] == "failed"
            and "allocator bug" in body["registrationState"]["errorMessage"]
        )
        assert dps.registry.devices() == []

    asyncio.run(scenario())


class _Webhook(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    answer: dict[str, Any] = {}
    #: When set, sent as the body instead of ``answer``.
    raw: bytes | None = None
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).requests.append(json.loads(self.rfile.read(length)))
        raw = type(self).raw
        data = raw if raw is not None else json.dumps(type(self).answer).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Webhook.requests, _Webhook.raw, _Webhook.status = [], None, 200
    yield f"http://127.0.0.1:{server.server_address[1]}/allocate?code=x"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_custom_allocation_through_a_webhook(pki: PKI, webhook: str) -> None:
    _Webhook.answer = {
        "iotHubHostName": HOSTS["hub1"],
        "initialTwin": {"properties": {"desired": {"w": True}}},
        "payload": {"from": "webhook"},
    }

    async def scenario() -> None:
        dps = make_dps(pki)
        dps.registry.put_group(
            EnrollmentGroup(
                "default",
                pem(pki.intermediate),
                allocation=AllocationPolicy.CUSTOM,
                webhook_url=webhook,
            )
        )
        rid = regid()
        _, body = await dps.register(rid, payload={"p": 1})
        assert body["registrationState"]["assignedHub"] == HOSTS["hub1"]
        assert body["registrationState"]["payload"] == {"from": "webhook"}
        assert dps.registry.get_twin("hub1", rid).desired == {"w": True}
        (sent,) = _Webhook.requests
        assert sent["deviceRuntimeContext"]["registrationId"] == rid
        assert sent["deviceRuntimeContext"]["payload"] == {"p": 1}
        assert sent["deviceRuntimeContext"]["x509"]["subjectName"] == f"CN={rid}"
        assert sorted(sent["linkedHubs"]) == sorted(HOSTS.values())
        assert sent["enrollmentGroup"]["enrollmentGroupId"] == "default"
        _Webhook.answer = {"no": "hub"}
        _, body = await dps.register(regid())
        assert body["status"] == "failed"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("http-500", "answered HTTP 500"),
        ("not-json", "webhook failed"),
        ("not-an-object", "lacks a string 'iotHubHostName'"),
        ("unlinked-hub", "not one of the linked hubs"),
        ("twin-not-an-object", "'initialTwin' must be an object"),
        ("unreachable", "webhook failed"),
    ],
)
def test_a_failing_webhook_ends_in_status_failed(
    pki: PKI, webhook: str, case: str, message: str
) -> None:
    _Webhook.answer = {"iotHubHostName": HOSTS["hub1"]}
    if case == "http-500":
        _Webhook.status = 500
    elif case == "not-json":
        _Webhook.raw = b"<html>oops</html>"
    elif case == "not-an-object":
        _Webhook.raw = b"[1, 2]"
    elif case == "unlinked-hub":
        _Webhook.answer = {"iotHubHostName": "elsewhere.example"}
    elif case == "twin-not-an-object":
        _Webhook.answer = {"iotHubHostName": HOSTS["hub1"], "initialTwin": [1]}
    url = webhook
    if case == "unreachable":
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{closed.getsockname()[1]}/allocate"

    async def scenario() -> None:
        dps = make_dps(pki)
        dps.registry.put_group(
            EnrollmentGroup(
                "default",
                pem(pki.intermediate),
                allocation=AllocationPolicy.CUSTOM,
                webhook_url=url,
            )
        )
        rid = regid()
        topic, body = await dps.register(rid)
        assert topic.startswith("$dps/registrations/res/200/")
        state = body["registrationState"]
        assert (body["status"], state["errorCode"]) == ("failed", 400207)
        assert message in state["errorMessage"]
        assert dps.registry.devices() == []

    asyncio.run(scenario())


# -- reprovisioning ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ReprovisionPolicy.MIGRATE, ("hub2", {"d": 2}, {"r": 1}, "deviceDataMigrated")),
        (ReprovisionPolicy.RESET, ("hub2", {"d": 0}, {}, "deviceDataReset")),
        (ReprovisionPolicy.NEVER, ("hub1", {"d": 2}, {"r": 1}, "reprovisionedToInitialAssignment")),
    ],
)
def test_reprovision_policies(
    pki: PKI,
    policy: ReprovisionPolicy,
    expected: tuple[str, dict[str, int], dict[str, int], str],
) -> None:
    hub_after, desired_after, reported_after, substatus = expected

    def group(hub: str) -> EnrollmentGroup:
        return EnrollmentGroup(
            "default",
            pem(pki.intermediate),
            allocation=AllocationPolicy.STATIC,
            iot_hubs=(hub,),
            reprovision=policy,
            initial_twin=InitialTwin({"d": 0}),
        )

    async def scenario() -> None:
        dps = make_dps(pki)
        dps.registry.put_group(group("hub1"))
        rid = regid()
        issued = chain_of(pki.issue_device(rid), pki)
        _, first = await dps.register(rid, chain=issued)
        assert first["registrationState"]["substatus"] == "initialAssignment"
        dps.registry.patch_desired("hub1", rid, {"d": 2})
        dps.registry.patch_reported("hub1", rid, {"r": 1})
        dps.registry.put_group(group("hub2"))
        _, second = await dps.register(rid, chain=issued)
        state = second["registrationState"]
        assert state["assignedHub"] == HOSTS[hub_after]
        assert state["substatus"] == substatus
        assert state["createdDateTimeUtc"] == first["registrationState"]["createdDateTimeUtc"]
        twin = dps.registry.get_twin(hub_after, rid)
        assert twin.desired == desired_after and twin.reported == reported_after
        assert [d.hub for d in dps.registry.devices()] == [hub_after]

    asyncio.run(scenario())


def test_operator_disabled_device_stays_disabled_and_deleted_one_comes_back(pki: PKI) -> None:
    async def scenario() -> None:
        dps = make_dps(pki)
        rid = regid()
        chain = chain_of(pki.issue_device(rid), pki)
        _, body = await dps.register(rid, chain=chain)
        hub = {v: k for k, v in HOSTS.items()}[body["registrationState"]["assignedHub"]]
        dps.registry.set_device_enabled(hub, rid, False)
        _, body = await dps.register(rid, chain=chain)
        assert body["status"] == "assigned"
        assert not dps.registry.get_device(hub, rid).enabled
        dps.registry.delete_device(hub, rid)
        _, body = await dps.register(rid, chain=chain)
        assert body["registrationState"]["substatus"] == "initialAssignment"
        assert dps.registry.get_device(hub, rid).enabled

    asyncio.run(scenario())


def test_reserving_throttle_books_one_slot_per_refused_device() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0], reserve_slots=True)
    now[0] += 10  # idle long enough for a full burst
    assert [limiter.acquire(f"d{n}") for n in range(2)] == [None, None]
    # The rest of the fleet arriving at once: each books the next slot, 0.5 s apart.
    waits = [limiter.acquire(f"d{n}") for n in range(2, 8)]
    assert waits == [1, 1, 2, 2, 3, 3]
    # Back too early: refused again with the time left, the slot kept.
    now[0] += 0.2
    assert limiter.acquire("d7") == 3
    # Back when told: admitted, whatever others do meanwhile.
    now[0] += 0.8
    assert limiter.acquire("d2") is None
    assert limiter.acquire("newcomer") == 3  # behind the booked ones
    now[0] += 2.0
    assert [limiter.acquire(f"d{n}") for n in range(3, 8)] == [None] * 5
    # Slots of devices that never came back are forgotten in time.
    now[0] += RateLimiter.SLOT_EXPIRY_S + 10
    assert limiter.acquire("newcomer") is None
