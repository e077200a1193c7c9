"""IoT Hub service logic through the Endpoint/DeviceSession contract with a fake connection."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devcloud.errors import (
    DeviceNotOnlineError,
    InvalidRequestError,
    MethodTimeoutError,
    NotFoundError,
)
from devcloud.hub import (
    MAX_MESSAGE_BYTES,
    HubEndpoint,
    HubSession,
    encode_property_bag,
    parse_property_bag,
)
from devcloud.model import InitialTwin, Twin
from devcloud.mqtt.endpoint import ProtocolViolation
from devcloud.pki import PKI
from devcloud.registry import Registry
from devcloud.telemetry import TelemetryLog
from tests.support.devcloud import (
    RecordingConnection,
    chain_of,
    connect_request,
    pki_fixture,  # noqa: F401
)

METHODS = "$iothub/methods/POST/#"
DESIRED = "$iothub/twin/PATCH/properties/desired/#"
TWIN_RES = "$iothub/twin/res/#"


@dataclass
class Hub:
    pki: PKI
    registry: Registry
    telemetry: TelemetryLog
    endpoint: HubEndpoint

    def add_device(self, device_id: str, *, desired: dict[str, object] | None = None) -> None:
        twin = Twin.initial(InitialTwin(desired or {}))
        self.registry.create_device("hub1", device_id, twin=twin)

    def connect(
        self,
        device_id: str,
        *,
        chain: list[x509.Certificate] | None = None,
        clean_session: bool = True,
    ) -> tuple[HubSession, RecordingConnection]:
        if chain is None:
            chain = chain_of(self.pki.issue_device(device_id), self.pki)
        conn = RecordingConnection(device_id)
        code, session = self.endpoint.authenticate(
            connect_request(
                device_id,
                f"127.0.0.3/{device_id}/?api-version=2021-04-12",
                chain,
                clean_session=clean_session,
            ),
            conn,
        )
        assert code == 0
        assert isinstance(session, HubSession)
        return session, conn


def make_hub(pki: PKI) -> Hub:
    registry = Registry(("hub1", "hub2"))
    telemetry = TelemetryLog()
    endpoint = HubEndpoint("hub1", "127.0.0.3", registry, telemetry, is_revoked=pki.is_revoked)
    return Hub(pki, registry, telemetry, endpoint)


def device_id() -> str:
    return f"d-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ok", 0),
        ("gateway-hostname", 0),
        ("unknown", 5),
        ("disabled", 5),
        ("other-hub", 5),
        ("cn-mismatch", 5),
        ("revoked", 5),
        ("username-device-mismatch", 5),
        ("no-certificate", 5),
        ("no-username", 4),
        ("garbage-username", 4),
    ],
)
def test_connect(pki: PKI, case: str, expected: int) -> None:
    hub = make_hub(pki)
    did = device_id()
    if case == "other-hub":
        hub.registry.create_device("hub2", did)
    elif case != "unknown":
        hub.add_device(did)
    if case == "disabled":
        hub.registry.set_device_enabled("hub1", did, False)
    issued = pki.issue_device(did, cn="intruder" if case == "cn-mismatch" else None)
    if case == "revoked":
        pki.revoke(issued.cert)
    chain = [] if case == "no-certificate" else chain_of(issued, pki)
    username: str | None = {
        "gateway-hostname": f"my-gateway.local/{did}/?api-version=2021-04-12",
        "username-device-mismatch": "127.0.0.3/another/?api-version=2021-04-12",
        "no-username": None,
        "garbage-username": "garbage",
    }.get(case, f"127.0.0.3/{did}/?api-version=2021-04-12")
    code, session = hub.endpoint.authenticate(
        connect_request(did, username, chain), RecordingConnection(did)
    )
    assert code == expected
    assert (session is not None) == (expected == 0)
    assert hub.endpoint.is_connected(did) == (expected == 0)


def test_subscriptions(pki: PKI) -> None:
    hub = make_hub(pki)
    did = device_id()
    hub.add_device(did)
    session, _ = hub.connect(did)
    for granted in (f"devices/{did}/messages/devicebound/#", TWIN_RES, DESIRED, METHODS):
        assert session.on_subscribe(granted, 1) == 1
        assert session.on_subscribe(granted, 0) == 0
    for refused in (
        "#",
        "devices/other/messages/devicebound/#",
        f"devices/{did}/messages/events/#",
        "$iothub/#",
        "$dps/registrations/res/#",
    ):
        assert session.on_subscribe(refused, 1) == 0x80


@pytest.mark.parametrize(
    ("bag", "app", "system"),
    [
        ("", {}, {}),
        ("a=1&b=two", {"a": "1", "b": "two"}, {}),
        (
            "%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=m1&%24.cid=c1&k=v%20w",
            {"k": "v w"},
            {"$.ct": "application/json", "$.ce": "utf-8", "$.mid": "m1", "$.cid": "c1"},
        ),
        ("$.ct=text%2Fplain&flag", {"flag": ""}, {"$.ct": "text/plain"}),
        ("=novalue&&x=%ZZ", {"x": "%ZZ"}, {}),
    ],
)
def test_property_bag(bag: str, app: dict[str, str], system: dict[str, str]) -> None:
    assert parse_property_bag(bag) == (app, system)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=5))
def test_property_bag_round_trip(props: dict[str, str]) -> None:
    app, system = parse_property_bag(encode_property_bag(props))
    assert {**app, **system} == props


def test_telemetry_is_stored_with_properties_and_sequence(pki: PKI) -> None:
    hub = make_hub(pki)
    did = device_id()
    hub.add_device(did)
    session, conn = hub.connect(did)
    session.on_publish(
        f"devices/{did}/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&room=lab",
        b'{"t": 21.5}',
        1,
    )
    session.on_publish(f"devices/{did}/messages/events/", b"second", 1)
    session.on_publish(f"devices/{did}/messages/events", b"third", 1)
    first, second, third = hub.telemetry.since(0, device_id=did)
    assert (first.sequence_number, second.sequence_number, third.sequence_number) == (1, 2, 3)
    assert first.body == b'{"t": 21.5}' and first.hub == "hub1" and first.device_id == did
    assert first.properties == {"room": "lab"}
    assert first.system_properties == {"$.ct": "application/json", "$.ce": "utf-8"}
    assert first.enqueued_time.endswith("Z")
    assert second.body == b"second" and second.properties == {}
    assert [m.body for m in hub.telemetry.since(2)] == [b"third"]
    assert hub.telemetry.since(0, device_id="other") == []
    assert conn.closed is None and conn.published == []


@pytest.mark.parametrize(
    "topic",
    [
        "devices/{other}/messages/events/",
        "devices/{me}/messages/devicebound/",
        "devices/{me}/twin",
        "$iothub/twin/PATCH/properties/desired/?$rid=1",
        "$iothub/methods/POST/x/?$rid=1",
        "$iothub/methods/res/abc/?$rid=1",
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        "random/topic",
    ],
)
def test_forbidden_topics_are_violations(pki: PKI, topic: str) -> None:
    hub = make_hub(pki)
    did = device_id()
    hub.add_device(did)
    session, _ = hub.connect(did)
    with pytest.raises(ProtocolViolation):
        session.on_publish(topic.format(me=did, other="someone-else"), b"{}", 1)
    assert hub.telemetry.since(0) == []


def test_oversize_message_is_a_violation(pki: PKI) -> None:
    hub = make_hub(pki)
    did = device_id()
    hub.add_device(did)
    session, _ = hub.connect(did)
    session.on_publish(f"devices/{did}/messages/events/", b"x" * MAX_MESSAGE_BYTES, 1)
    with pytest.raises(ProtocolViolation, match="256 KiB"):
        session.on_publish(f"devices/{did}/messages/events/", b"x" * (MAX_MESSAGE_BYTES + 1), 1)
    assert len(hub.telemetry.since(0)) == 1


def test_twin_get_and_reported_patch(pki: PKI) -> None:
    hub = make_hub(pki)
    did = device_id()
    hub.add_device(did, desired={"interval_s": 10})
    session, conn = hub.connect(did)
    session.on_publish("$iothub/twin/GET/?$rid=1", b"", 0)
    assert conn.published[-1][0] == "$iothub/twin/res/200/?$rid=1"
    assert conn.last_json() == {
        "desired": {"interval_s": 10, "$version": 1},
        "reported": {"$version": 1},
    }
    session.on_publish("$iothub/twin/PATCH/properties/reported/?$rid=2", b'{"fw": "1.2"}', 0)
    assert conn.published[-1][:2] == ("$iothub/twin/res/204/?$rid=2&$version=2", b"")
    session.on_publish("$iothub/twin/PATCH/properties/reported/?$rid=3", b'{"fw": null}', 0)
    assert conn.published[-1][0] == "$iothub/twin/res/204/?$rid=3&$version=3"
    for bad in (b"[1]", b"7", b"nope", b""):
        session.on_publish("$iothub/twin/PATCH/properties/reported/?$rid=4", bad, 0)
        assert conn.published[-1][0] == "$iothub/twin/res/400/?$rid=4"
    assert hub.registry.get_twin("hub1", did).reported == {}
    assert hub.registry.get_twin("hub1", did).reported_version == 3


def test_desired_patch_is_pushed_only_to_a_subscribed_device(pki: PKI) -> None:
    hub = make_hub(pki)
    did = device_id()
    hub.add_device(did)
    session, conn = hub.connect(did)
    hub.registry.patch_desired("hub1", did, {"a": 1})
    assert conn.published == []
    session.on_subscribe(DESIRED, 0)
    hub.registry.patch_desired("hub1", did, {"b": {"c": 2}})
    topic, payload, _ = conn.published[-1]
    assert topic == "$iothub/twin/PATCH/properties/desired/?$version=3"
    assert json.loads(payload) == {"b": {"c": 2}, "$version": 3}


def test_disable_and_delete_close_the_live_connection(pki: PKI) -> None:
    hub = make_hub(pki)
    a, b = device_id(), device_id()
    hub.add_device(a)
    hub.add_device(b)
    _, conn_a = hub.connect(a)
    _, conn_b = hub.connect(b)
    hub.registry.patch_desired("hub1", a, {"x": 1})
    assert [conn_a.closed] == [None]
    hub.registry.set_device_enabled("hub1", a, False)
    assert conn_a.closed == "device disabled"
    assert not hub.endpoint.is_connected(a)
    hub.registry.delete_device("hub1", b)
    assert conn_b.closed == "device deleted"
    assert not hub.endpoint.is_connected(b)


def test_a_second_connection_replaces_the_first(pki: PKI) -> None:
    hub = make_hub(pki)
    did = device_id()
    hub.add_device(did)
    chain = chain_of(pki.issue_device(did), pki)
    first, conn1 = hub.connect(did, chain=chain)
    second, conn2 = hub.connect(did, chain=chain)
    assert conn1.closed and conn2.closed is None
    first.on_disconnect("closed")  # the old connection's late goodbye
    assert hub.endpoint.is_connected(did)
    second.on_disconnect("closed")
    assert not hub.endpoint.is_connected(did)


def test_method_round_trip_timeout_and_offline(pki: PKI) -> None:
    async def scenario() -> None:
        hub = make_hub(pki)
        did = device_id()
        hub.add_device(did)
        with pytest.raises(DeviceNotOnlineError):
            await hub.endpoint.invoke_method(did, "reboot", None, 1.0)
        with pytest.raises(NotFoundError):
            await hub.endpoint.invoke_method("nobody", "reboot", None, 1.0)
        session, conn = hub.connect(did)
        with pytest.raises(DeviceNotOnlineError):  # connected but not subscribed
            await hub.endpoint.invoke_method(did, "reboot", None, 1.0)
        session.on_subscribe(METHODS, 0)
        call = asyncio.ensure_future(
            hub.endpoint.invoke_method(did, "reprovision", {"why": "test"}, 5.0)
        )
        for _ in range(100):
            if conn.published:
                break
            await asyncio.sleep(0)
        topic, payload, _ = conn.published[-1]
        assert topic.startswith("$iothub/methods/POST/reprovision/?$rid=")
        assert json.loads(payload) == {"why": "test"}
        rid = topic.rsplit("=", 1)[1]
        session.on_publish(f"$iothub/methods/res/200/?$rid=other{rid}", b'{"x": 0}', 0)
        assert not call.done()
        session.on_publish(f"$iothub/methods/res/200/?$rid={rid}", b'{"ok": true}', 0)
        response = await call
        assert (response.status, response.payload) == (200, {"ok": True})
        with pytest.raises(MethodTimeoutError):
            await hub.endpoint.invoke_method(did, "slow", None, 0.05)
        # A disconnect fails a pending call at once.
        call = asyncio.ensure_future(hub.endpoint.invoke_method(did, "x", None, 30.0))
        await asyncio.sleep(0)
        session.on_disconnect("gone")
        with pytest.raises(DeviceNotOnlineError):
            await asyncio.wait_for(call, 5.0)

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["", "a/b", "a?b", "a+b", "a#", "x\u0000y", "\udcff"])
def test_invalid_method_names_are_400_before_anything_is_sent(pki: PKI, name: str) -> None:
    async def scenario() -> None:
        hub = make_hub(pki)
        did = device_id()
        hub.add_device(did)
        session, conn = hub.connect(did)
        session.on_subscribe(METHODS, 0)
        with pytest.raises(InvalidRequestError, match="invalid method name"):
            await hub.endpoint.invoke_method(did, name, None, 1.0)
        assert conn.published == []

    asyncio.run(scenario())


def test_c2d_is_queued_until_the_device_subscribes(pki: PKI) -> None:
    async def scenario() -> None:
        hub = make_hub(pki)
        did = device_id()
        hub.add_device(did)
        mid = hub.endpoint.send_c2d(did, b"while offline", {"k": "v"})
        session, conn = hub.connect(did)
        assert conn.published == []
        session.on_subscribe(f"devices/{did}/messages/devicebound/#", 1)
        await asyncio.sleep(0)  # delivery is scheduled after the SUBACK
        topic, payload, qos = conn.published[-1]
        assert topic.startswith(f"devices/{did}/messages/devicebound/")
        app, system = parse_property_bag(topic.split("/devicebound/", 1)[1])
        assert app == {"k": "v"} and system["$.mid"] == mid
        assert (payload, qos) == (b"while offline", 1)
        hub.endpoint.send_c2d(did, b"live")
        assert conn.published[-1][1] == b"live"
        assert len(conn.published) == 2
        with pytest.raises(NotFoundError):
            hub.endpoint.send_c2d("nobody", b"x")

    asyncio.run(scenario())


def test_clean_session_0_subscriptions_outlive_the_connection(pki: PKI) -> None:
    async def scenario() -> None:
        hub = make_hub(pki)
        did = device_id()
        hub.add_device(did)
        chain = chain_of(pki.issue_device(did), pki)
        session, _ = hub.connect(did, chain=chain, clean_session=False)
        session.on_subscribe(METHODS, 0)
        session.on_disconnect("bye")
        _, conn = hub.connect(did, chain=chain, clean_session=False)
        call = asyncio.ensure_future(hub.endpoint.invoke_method(did, "m", None, 0.05))
        with pytest.raises(MethodTimeoutError):  # reached the device (not "offline")
            await call
        assert conn.published and conn.published[0][0].startswith("$iothub/methods/POST/m/")
        _, _ = hub.connect(did, chain=chain, clean_session=True)
        with pytest.raises(DeviceNotOnlineError):
            await hub.endpoint.invoke_method(did, "m", None, 0.05)

    asyncio.run(scenario())


GARBAGE_HUB: Hub
GARBAGE_CHAIN: list[x509.Certificate]


@pytest.fixture(autouse=True, scope="module")
def _garbage_hub(pki: PKI) -> None:
    global GARBAGE_HUB, GARBAGE_CHAIN
    GARBAGE_HUB = make_hub(pki)
    GARBAGE_HUB.add_device("garbage-device")
    GARBAGE_CHAIN = chain_of(pki.issue_device("garbage-device"), pki)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.one_of(
        st.text(max_size=60),
        st.sampled_from(
            [
                "devices/garbage-device/messages/events/",
                "$iothub/twin/GET/?$rid=",
                "$iothub/twin/PATCH/properties/reported/?$rid=",
                "$iothub/methods/res/",
            ]
        ).flatmap(lambda prefix: st.text(max_size=30).map(lambda s: prefix + s)),
    ),
    payload=st.binary(max_size=100),
)
def test_garbage_gets_a_protocol_answer_or_a_violation(topic: str, payload: bytes) -> None:
    session, conn = GARBAGE_HUB.connect("garbage-device", chain=GARBAGE_CHAIN)
    try:
        session.on_publish(topic, payload, 1)
    except ProtocolViolation:
        return
    for answer_topic, _, _ in conn.published:
        assert answer_topic.startswith("$iothub/twin/res/")
