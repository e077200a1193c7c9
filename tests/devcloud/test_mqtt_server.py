"""devcloud's MQTT server over real TLS on loopback, with paho-mqtt and raw sockets."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devcloud.mqtt.codec import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode,
)
from devcloud.mqtt.server import topic_matches
from devcloud.pki import PKI, Issued
from devcloud.tls import ServerTLS
from tests.support.mqtt_server import (
    LOOPBACK,
    TIMEOUT_S,
    PahoClient,
    RawClient,
    RecordingEndpoint,
    ServerThread,
    refused_at_tls,
    server_tls_factory,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls(pki: PKI) -> ServerTLS:
    return server_tls_factory(pki)


@pytest.fixture
def endpoint() -> RecordingEndpoint:
    return RecordingEndpoint()


@pytest.fixture
def server(tls: ServerTLS, endpoint: RecordingEndpoint) -> Iterator[ServerThread]:
    with ServerThread(endpoint, tls, name="test") as running:
        yield running


@pytest.fixture
def ca(pki: PKI) -> Path:
    return pki.ca_bundle_path


@pytest.fixture
def device(pki: PKI) -> Issued:
    return pki.issue_device("raw-device")


def paho(client_id: str, pki: PKI, **options: bool) -> PahoClient:
    return PahoClient(client_id, pki.issue_device(client_id), pki.ca_bundle_path, **options)


# --- topic matching --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/b/c", True),
        ("+/+", "/x", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$iothub/methods/POST/x", False),
        ("+/methods/#", "$iothub/methods/POST/x", False),
        ("$iothub/methods/POST/#", "$iothub/methods/POST/reboot/?$rid=1", True),
        ("$iothub/+/POST/#", "$iothub/methods/POST/x", True),
        ("devices/d1/messages/devicebound/#", "devices/d2/messages/devicebound/x", False),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


# --- CONNECT -----------------------------------------------------------------------------


def test_connect_gives_the_endpoint_the_verified_chain(
    server: ServerThread, endpoint: RecordingEndpoint, pki: PKI
) -> None:
    client = paho("chain-device", pki)
    try:
        assert client.connect(server.address) == (True, 0, False)
        (request,) = endpoint.requests
        assert request.client_id == "chain-device"
        assert request.transport == "mqtts"
        assert request.local_address == server.address
        assert request.clean_session is True and request.keep_alive_s == 60
        # devcloud trusts its intermediate itself (partial chains), so verification stops
        # there: DPS matches a root-CA group by "signed the top of the chain".
        assert [c.subject for c in request.cert_chain] == [
            c.subject for c in (pki.issue_device("chain-device").cert, pki.intermediate)
        ]
        assert request.cert_chain[0].serial_number != pki.intermediate.serial_number
        assert [c.client_id for c in server.call(server.server.connections)] == ["chain-device"]
    finally:
        client.close()


def test_connect_passes_username_and_password(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        answer = raw.connect("d", username="hub/d/?api-version=1", password=b"pw", keep_alive_s=7)
        assert answer == ConnAck(session_present=False, return_code=0)
    (request,) = endpoint.requests
    assert (request.username, request.password, request.keep_alive_s) == (
        "hub/d/?api-version=1",
        b"pw",
        7,
    )
    assert [c.serial_number for c in request.cert_chain[:1]] == [device.cert.serial_number]


@pytest.mark.parametrize("code", [3, 4, 5])
def test_endpoint_refusal_is_answered_with_its_code(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued, code: int
) -> None:
    endpoint.connack_codes["refused"] = code
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("refused") == ConnAck(False, code)
        raw.expect_closed()
    assert server.call(server.server.connections) == []


def test_paho_sees_not_authorized(
    server: ServerThread, endpoint: RecordingEndpoint, pki: PKI
) -> None:
    endpoint.connack_codes["not-authorized"] = 5
    client = paho("not-authorized", pki)
    try:
        accepted, reason, _ = client.connect(server.address)
        assert not accepted
        assert reason == 135  # paho's name for MQTT 3.1.1 CONNACK 5, "Not authorized"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("protocol_name", "protocol_level"), [("MQIsdp", 3), ("MQTT", 5), ("MQTT", 3)]
)
def test_other_protocol_versions_get_connack_1(
    server: ServerThread,
    endpoint: RecordingEndpoint,
    *,
    ca: Path,
    device: Issued,
    protocol_name: str,
    protocol_level: int,
) -> None:
    with RawClient(server.address, ca, device) as raw:
        answer = raw.connect("d", protocol_name=protocol_name, protocol_level=protocol_level)
        assert answer == ConnAck(False, 1)
        raw.expect_closed()
    assert endpoint.requests == []


def test_empty_client_id_gets_connack_2(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("") == ConnAck(False, 2)
        raw.expect_closed()
    assert endpoint.requests == []


def test_authenticate_raising_gives_connack_3(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    endpoint.raise_in_authenticate = True
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("d") == ConnAck(False, 3)
        raw.expect_closed()


def test_first_packet_must_be_connect(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        raw.send(PingReq())
        raw.expect_closed()
    assert endpoint.requests == []


def test_second_connect_closes(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("twice") == ConnAck(False, 0)
        raw.send(Connect("twice"))
        raw.expect_closed()
    assert "second CONNECT" in endpoint.wait_disconnected(endpoint.session("twice"))


# --- SUBSCRIBE, PUBLISH, routing ----------------------------------------------------------


def test_publish_goes_only_to_the_connection_that_asked(
    server: ServerThread, endpoint: RecordingEndpoint, pki: PKI
) -> None:
    methods = "$iothub/methods/POST/#"
    first, second = paho("route-a", pki), paho("route-b", pki)
    try:
        for client in (first, second):
            assert client.connect(server.address)[0]
            assert client.subscribe(methods, 1) == [1]
        assert second.subscribe("#", 0) == [0]
        conn_a = endpoint.session("route-a").connection
        conn_b = endpoint.session("route-b").connection

        conn_a.publish("$iothub/methods/POST/reboot/?$rid=1", b"{}", 1)
        received = first.message()
        assert (received.topic, received.payload, received.qos) == (
            "$iothub/methods/POST/reboot/?$rid=1",
            b"{}",
            1,
        )
        # Nothing for B so far: its first message is the marker sent after.
        conn_b.publish("$iothub/unmatched", b"dropped: '#' does not match '$' topics")
        conn_b.publish("devices/route-b/messages/devicebound/marker", b"m", 0)
        marker = second.message()
        assert (marker.topic, marker.qos) == ("devices/route-b/messages/devicebound/marker", 0)
        assert second.messages.empty() and first.messages.empty()
    finally:
        first.close()
        second.close()


def test_subscribe_asks_the_session_per_filter_and_caps_qos(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    endpoint.refused_filters.add("refused/#")
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("subscriber") == ConnAck(False, 0)
        raw.send(Subscribe(3, (("a/+", 0), ("b/#", 1), ("c", 2), ("refused/#", 1))))
        assert raw.receive() == SubAck(3, (0, 1, 1, 0x80))
        session = endpoint.session("subscriber")
        assert session.subscribed == [("a/+", 0), ("b/#", 1), ("c", 1), ("refused/#", 1)]
        connection = session.connection
        assert server.call(lambda: connection.subscriptions) == {"a/+": 0, "b/#": 1, "c": 1}
        # Delivery at the lower of the publish QoS and the granted QoS.
        connection.publish("a/x", b"1", 1)
        assert raw.receive() == Publish("a/x", b"1", 0)
        connection.publish("refused/x", b"dropped", 1)
        raw.send(Unsubscribe(4, ("a/+",)))
        assert raw.receive() == UnsubAck(4)
        connection.publish("a/x", b"dropped after unsubscribe", 0)
        raw.send(PingReq())
        assert raw.receive() == PingResp()


def test_grants_above_the_request_or_invalid_are_corrected(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    endpoint.grants.update({"greedy": 1, "invalid": 2})
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("grants") == ConnAck(False, 0)
        raw.send(Subscribe(5, (("greedy", 0), ("invalid", 1))))
        assert raw.receive() == SubAck(5, (0, 0x80))
        connection = endpoint.session("grants").connection
        assert server.call(lambda: connection.subscriptions) == {"greedy": 0}


def test_qos1_is_acknowledged_both_ways(
    server: ServerThread, endpoint: RecordingEndpoint, pki: PKI
) -> None:
    client = paho("qos1-device", pki)
    try:
        assert client.connect(server.address)[0]
        assert client.subscribe("devices/qos1-device/messages/devicebound/#", 1) == [1]
        session = endpoint.session("qos1-device")
        # Device -> server: paho's publish completes only on PUBACK, after on_publish ran.
        client.publish("devices/qos1-device/messages/events/", b"telemetry", 1)
        assert session.published == [("devices/qos1-device/messages/events/", b"telemetry", 1)]
        # Server -> device: held until paho acknowledges.
        connection = session.connection
        connection.publish("devices/qos1-device/messages/devicebound/x", b"c2d", 1)
        message = client.message()
        assert (message.payload, message.qos) == (b"c2d", 1)
        wait_until(lambda: server.call(lambda: connection.unacknowledged) == 0)
    finally:
        client.close()


def test_device_puback_is_sent_only_after_on_publish(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    endpoint.forbidden_topics.add("forbidden")
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("publisher") == ConnAck(False, 0)
        raw.send(Publish("allowed", b"x", 1, packet_id=9))
        assert raw.receive() == PubAck(9)
        raw.send(Publish("allowed", b"y", 0))
        raw.send(Publish("forbidden", b"z", 1, packet_id=10))
        raw.expect_closed()  # no PUBACK for the forbidden one
    session = endpoint.session("publisher")
    assert "protocol violation" in endpoint.wait_disconnected(session)
    assert session.published == [("allowed", b"x", 1), ("allowed", b"y", 0)]


def test_puback_delay_holds_each_acknowledgement_but_pipelines_them(
    tls: ServerTLS, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    import time

    with (
        ServerThread(endpoint, tls, name="slow", puback_delay_s=0.3) as slow,
        RawClient(slow.address, ca, device) as raw,
    ):
        assert raw.connect("delayed") == ConnAck(False, 0)
        sent = time.monotonic()
        for packet_id in (1, 2, 3):
            raw.send(Publish("allowed", b"x", 1, packet_id=packet_id))
        acks = [raw.receive() for _ in range(3)]
        elapsed = time.monotonic() - sent
        assert acks == [PubAck(1), PubAck(2), PubAck(3)]
        # Each one held the delay; all three together not three times it.
        assert elapsed >= 0.3
        assert elapsed < 0.9
        assert len(endpoint.session("delayed").published) == 3


def test_unacknowledged_qos1_stays_pending(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("pending") == ConnAck(False, 0)
        raw.send(Subscribe(1, (("c2d/#", 1),)))
        assert raw.receive() == SubAck(1, (1,))
        connection = endpoint.session("pending").connection
        for index in range(3):
            connection.publish(f"c2d/{index}", b"", 1)
        ids: list[int] = []
        for index in range(3):
            packet = raw.receive()
            assert isinstance(packet, Publish) and packet.topic == f"c2d/{index}"
            assert packet.packet_id is not None
            ids.append(packet.packet_id)
        assert len(set(ids)) == 3
        assert server.call(lambda: connection.unacknowledged) == 3
        raw.send(PubAck(ids[1]))
        raw.send(PingReq())
        assert raw.receive() == PingResp()
        assert server.call(lambda: connection.unacknowledged) == 2


# --- sessions ----------------------------------------------------------------------------


def test_persistent_session_survives_reconnect(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("persistent", clean_session=False) == ConnAck(False, 0)
        raw.send(Subscribe(1, (("c2d/#", 1),)))
        assert raw.receive() == SubAck(1, (1,))
        endpoint.session("persistent").connection.publish("c2d/unacked", b"first", 1)
        first = raw.receive()
        assert isinstance(first, Publish) and not first.dup
    endpoint.wait_disconnected(endpoint.session("persistent", 0))

    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("persistent", clean_session=False) == ConnAck(True, 0)
        again = raw.receive()
        assert again == Publish("c2d/unacked", b"first", 1, dup=True, packet_id=first.packet_id)
        assert isinstance(again, Publish) and again.packet_id is not None
        raw.send(PubAck(again.packet_id))
        # The subscription was kept: no new SUBSCRIBE needed.
        endpoint.session("persistent", 1).connection.publish("c2d/next", b"second", 0)
        assert raw.receive() == Publish("c2d/next", b"second", 0)
    endpoint.wait_disconnected(endpoint.session("persistent", 1))

    # clean_session=1 discards it; a later clean_session=0 starts afresh.
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("persistent", clean_session=True) == ConnAck(False, 0)
        raw.send(Subscribe(2, (("marker", 0),)))
        assert raw.receive() == SubAck(2, (0,))
        connection = endpoint.session("persistent", 2).connection
        connection.publish("c2d/dropped", b"no subscription any more", 1)
        connection.publish("marker", b"m", 0)
        assert raw.receive() == Publish("marker", b"m", 0)
    endpoint.wait_disconnected(endpoint.session("persistent", 2))
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("persistent", clean_session=False) == ConnAck(False, 0)


def test_paho_persistent_session_reports_session_present(
    server: ServerThread, endpoint: RecordingEndpoint, pki: PKI
) -> None:
    client = paho("paho-persistent", pki, clean_session=False)
    try:
        assert client.connect(server.address) == (True, 0, False)
        assert client.subscribe("$iothub/twin/res/#", 1) == [1]
    finally:
        client.close()
    endpoint.wait_disconnected(endpoint.session("paho-persistent", 0))
    client = paho("paho-persistent", pki, clean_session=False)
    try:
        assert client.connect(server.address) == (True, 0, True)
        endpoint.session("paho-persistent", 1).connection.publish("$iothub/twin/res/200/", b"{}", 1)
        assert client.message().topic == "$iothub/twin/res/200/"
    finally:
        client.close()


def test_duplicate_client_id_kicks_the_old_connection(
    server: ServerThread, endpoint: RecordingEndpoint, pki: PKI
) -> None:
    old, new = paho("twin-device", pki), paho("twin-device", pki)
    try:
        assert old.connect(server.address)[0]
        assert new.connect(server.address)[0]
        assert old.disconnected.wait(TIMEOUT_S)
        first, second = endpoint.session("twin-device", 0), endpoint.session("twin-device", 1)
        assert "kicked" in endpoint.wait_disconnected(first)
        assert second.disconnect_reason is None
        assert server.call(server.server.connections) == [second.connection]
        assert not new.disconnected.is_set()
    finally:
        old.close()
        new.close()


def test_service_can_close_a_connection(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("disabled") == ConnAck(False, 0)
        session = endpoint.session("disabled")
        session.connection.close("device disabled")
        raw.expect_closed()
    assert endpoint.wait_disconnected(session) == "device disabled"


def test_keep_alive_expiry_closes(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("sleepy", keep_alive_s=1) == ConnAck(False, 0)
        raw.expect_closed()  # 1.5 s after CONNECT with no packet
    assert "keep-alive expired" in endpoint.wait_disconnected(endpoint.session("sleepy"))


def test_no_connect_in_time_closes(pki: PKI, tls: ServerTLS, ca: Path) -> None:
    endpoint = RecordingEndpoint()
    silent = pki.issue_device("silent")
    with (
        ServerThread(endpoint, tls, connect_timeout_s=0.2) as server,
        RawClient(server.address, ca, silent) as raw,
    ):
        raw.send(encode(Connect("silent"))[:5])  # a truncated CONNECT
        raw.expect_closed()
    assert endpoint.requests == []


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def rogue(tmp_path: Path) -> PKI:
    return PKI.create(tmp_path / "rogue", name="rogue")


@pytest.mark.parametrize("case", ["no-client-cert", "untrusted-ca", "revoked", "expired"])
def test_failed_handshake_closes_only_that_connection(
    server: ServerThread,
    endpoint: RecordingEndpoint,
    *,
    pki: PKI,
    rogue: PKI,
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    identity: Issued | None
    if case == "no-client-cert":
        identity = None
    elif case == "untrusted-ca":
        identity = rogue.issue_device("rogue-device")
    elif case == "revoked":
        identity = pki.issue_device("revoked-device")
        pki.revoke(identity.cert)
    else:
        past = datetime.now(UTC) - timedelta(days=2)
        identity = pki.issue_device("expired", not_before=past, not_after=past + timedelta(days=1))
    with caplog.at_level(logging.WARNING, logger="devcloud.mqtt.server"):
        assert refused_at_tls(server.address, pki.ca_bundle_path, identity)
        wait_until(lambda: "TLS handshake failed" in caplog.text)
    assert endpoint.requests == []
    good = paho("after-bad-handshake", pki)
    try:
        assert good.connect(server.address)[0]
    finally:
        good.close()


def test_a_stalled_client_does_not_block_others(
    server: ServerThread, pki: PKI, ca: Path, device: Issued
) -> None:
    with (
        socket.create_connection(server.address, timeout=TIMEOUT_S) as plain,
        RawClient(server.address, ca, device) as half,
    ):
        plain.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        half.send(encode(Connect("half"))[:3])
        good = paho("unblocked", pki)
        try:
            assert good.connect(server.address)[0]
            assert good.subscribe("x", 0) == [0]
        finally:
            good.close()


def test_stop_closes_connections_and_pending_handshakes(pki: PKI, tls: ServerTLS, ca: Path) -> None:
    endpoint = RecordingEndpoint()
    server = ServerThread(endpoint, tls)
    with server:
        plain = socket.create_connection(server.address, timeout=TIMEOUT_S)
        raw = RawClient(server.address, ca, pki.issue_device("stopped"))
        assert raw.connect("stopped") == ConnAck(False, 0)
    with plain, raw:
        raw.expect_closed()
        assert plain.recv(1) == b""
    assert endpoint.wait_disconnected(endpoint.session("stopped")) == "server stopping"


# --- malformed input ---------------------------------------------------------------------

GARBAGE = [
    ("reserved packet type", b"\xf0\x00"),
    ("QoS 2 PUBLISH", b"\x34\x07\x00\x03a/b\x00\x01"),
    ("PUBREL", b"\x62\x02\x00\x01"),
    ("invalid UTF-8 topic", b"\x30\x04\x00\x02\xff\xfe"),
    ("five-byte remaining length", b"\x30\xff\xff\xff\xff\x7f"),
    ("wildcard in PUBLISH topic", b"\x30\x03\x00\x01#"),
    ("server-only packet", encode(ConnAck(False, 0))),
]


@pytest.mark.parametrize(("why", "data"), GARBAGE, ids=[why for why, _ in GARBAGE])
def test_malformed_packets_close_the_connection(
    server: ServerThread,
    endpoint: RecordingEndpoint,
    *,
    ca: Path,
    device: Issued,
    why: str,
    data: bytes,
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("garbage") == ConnAck(False, 0)
        raw.send(data)
        raw.expect_closed()
    session = endpoint.session("garbage")
    assert endpoint.wait_disconnected(session)
    assert session.published == []


def test_garbage_before_connect_closes(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        raw.send(b"GET / HTTP/1.1\r\n\r\n")
        raw.expect_closed()
    assert endpoint.requests == []


def test_truncated_publish_is_never_delivered(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("truncated") == ConnAck(False, 0)
        raw.send(encode(Publish("t", b"payload", 1, packet_id=1))[:-3])
    session = endpoint.session("truncated")
    assert "closed by the client" in endpoint.wait_disconnected(session)
    assert session.published == []


def test_oversize_publish_is_refused_from_its_header(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    big = encode(Publish("devices/big/messages/events/", bytes(300 * 1024), 1, packet_id=1))
    header_end = next(i for i in range(1, 6) if not big[i] & 0x80) + 1
    with RawClient(server.address, ca, device) as raw:
        assert raw.connect("big") == ConnAck(False, 0)
        raw.send(big[:header_end])  # the body never needs to arrive
        raw.expect_closed()
    session = endpoint.session("big")
    assert "exceeds the limit" in endpoint.wait_disconnected(session)


def test_largest_hub_message_is_accepted(
    server: ServerThread, endpoint: RecordingEndpoint, pki: PKI
) -> None:
    client = paho("large", pki)
    try:
        assert client.connect(server.address)[0]
        client.publish("devices/large/messages/events/", bytes(256 * 1024), 1)
        assert len(endpoint.session("large").published[0][1]) == 256 * 1024
    finally:
        client.close()


# --- WebSockets --------------------------------------------------------------------------


def test_paho_over_websockets(server: ServerThread, endpoint: RecordingEndpoint, pki: PKI) -> None:
    client = paho("ws-device", pki, websockets=True)
    try:
        assert client.connect(server.ws_address) == (True, 0, False)
        session = endpoint.session("ws-device")
        assert session.request.transport == "wss"
        assert session.request.local_address == server.ws_address
        assert session.request.cert_chain[0].subject == pki.issue_device("ws-device").cert.subject
        assert client.subscribe("$iothub/methods/POST/#", 1) == [1]
        client.publish("devices/ws-device/messages/events/", bytes(70_000), 1)  # 64-bit length
        assert session.published == [("devices/ws-device/messages/events/", bytes(70_000), 1)]
        session.connection.publish("$iothub/methods/POST/m/?$rid=5", b"x" * 200, 1)
        message = client.message()
        assert (message.topic, message.payload, message.qos) == (
            "$iothub/methods/POST/m/?$rid=5",
            b"x" * 200,
            1,
        )
        session.connection.close("bye")
        assert client.disconnected.wait(TIMEOUT_S)
    finally:
        client.close()


def test_websocket_wrong_path_is_404(server: ServerThread, ca: Path, device: Issued) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(device.chain_path, device.key_path)
    with (
        socket.create_connection(server.ws_address, timeout=TIMEOUT_S) as plain,
        context.wrap_socket(plain, server_hostname=LOOPBACK) as tls,
    ):
        tls.sendall(
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        response = b""
        while chunk := tls.recv(4096):
            response += chunk
    assert response.startswith(b"HTTP/1.1 404 ")


def test_plain_mqtt_on_the_websocket_port_is_refused(
    server: ServerThread, endpoint: RecordingEndpoint, ca: Path, device: Issued
) -> None:
    with RawClient(server.ws_address, ca, device) as raw:
        raw.send(Connect("not-websocket"))
        assert raw.read_all().startswith(b"HTTP/1.1 400 ")
    assert endpoint.requests == []


def test_a_client_that_stops_reading_is_dropped_as_slow_consumer(
    pki: PKI, tls: ServerTLS, ca: Path
) -> None:
    endpoint = RecordingEndpoint()
    with ServerThread(endpoint, tls, max_write_buffer=256 * 1024) as server:
        with RawClient(server.address, ca, pki.issue_device("slow")) as slow:
            assert slow.connect("slow") == ConnAck(False, 0)
            slow.send(Subscribe(1, (("c2d/#", 0),)))
            assert slow.receive() == SubAck(1, (0,))
            connection = endpoint.session("slow").connection

            def flood() -> int:
                sent = 0
                while not connection.closed and sent < 2000:  # at most 32 MiB
                    connection.publish("c2d/x", bytes(16 * 1024), 0)
                    sent += 1
                return sent

            assert server.call(flood) < 2000
            reason = endpoint.wait_disconnected(endpoint.session("slow"))
            assert "slow consumer" in reason
        # The server still serves others.
        with RawClient(server.address, ca, pki.issue_device("fast")) as fast:
            assert fast.connect("fast") == ConnAck(False, 0)
