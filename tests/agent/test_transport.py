"""agent.runtime.transport against devcloud's real MQTT/TLS server on loopback."""

from __future__ import annotations

import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.errors import TransportError
from agent.runtime.transport import (
    Connected,
    ConnectionLost,
    ConnectRefused,
    MessageReceived,
    MqttEndpoint,
    MqttTransport,
    PublishAcked,
    Subscribed,
    TlsSettings,
    TransportEvent,
)
from devcloud.pki import PKI, Issued
from tests.support.mqtt_harness import RecordingEndpoint, ServerThread, server_context

HOST = "127.0.0.1"
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("rogue"), name="rogue")


@pytest.fixture(scope="module")
def device(pki: PKI) -> Issued:
    return pki.issue_device("dev-transport")


@pytest.fixture
def endpoint() -> RecordingEndpoint:
    return RecordingEndpoint()


@pytest.fixture
def server(pki: PKI, endpoint: RecordingEndpoint) -> Iterator[ServerThread]:
    issued = pki.issue_server(HOST, ip_addresses=[HOST])
    thread = ServerThread(endpoint, server_context(pki, issued)).start(HOST)
    yield thread
    thread.stop()


def tls_for(device: Issued, ca: Path | None) -> TlsSettings:
    return TlsSettings(
        cert_chain_path=device.chain_path, key_path=device.key_path, key_passphrase=None, ca_path=ca
    )


def make_transport(
    server: ServerThread,
    device: Issued,
    ca: Path,
    *,
    websockets: bool = False,
    keep_alive_s: int = 30,
    clean_session: bool = False,
    connect_timeout_s: float = 5.0,
    client_id: str = "dev-transport",
) -> MqttTransport:
    host, port = server.ws_address if websockets else server.address
    endpoint = MqttEndpoint(
        host=host,
        port=port,
        client_id=client_id,
        username=f"hub/{client_id}/?api-version=2021-04-12",
        websockets=websockets,
        keep_alive_s=keep_alive_s,
        clean_session=clean_session,
    )
    return MqttTransport(endpoint, tls_for(device, ca), connect_timeout_s=connect_timeout_s)


def poll_until(
    transport: MqttTransport,
    done: Callable[[list[TransportEvent]], bool],
    deadline_s: float = DEADLINE_S,
) -> list[TransportEvent]:
    """Poll until ``done(all events so far)``; fail at the deadline."""
    seen: list[TransportEvent] = []
    end = time.monotonic() + deadline_s
    while not done(seen):
        left = end - time.monotonic()
        assert left > 0, f"timed out; events so far: {seen}"
        seen.extend(transport.poll(min(left, 0.5)))
    return seen


def first(kind: type) -> Callable[[list[TransportEvent]], bool]:
    return lambda events: any(isinstance(e, kind) for e in events)


def connect(transport: MqttTransport) -> Connected:
    transport.start_connect()
    events = poll_until(transport, bool)
    assert isinstance(events[0], Connected), events
    return events[0]


def test_connect_presents_identity_and_gets_connack_0(
    server: ServerThread, endpoint: RecordingEndpoint, device: Issued, pki: PKI
) -> None:
    with make_transport(server, device, pki.root_path, keep_alive_s=45) as transport:
        assert transport.fileno() is None
        assert connect(transport) == Connected(session_present=False)
        assert transport.connected
        assert transport.fileno() is not None
    request = endpoint.requests.get(timeout=DEADLINE_S)
    assert request.client_id == "dev-transport"
    assert request.username == "hub/dev-transport/?api-version=2021-04-12"
    assert request.password is None
    assert request.clean_session is False
    assert request.keep_alive_s == 45
    assert request.transport == "mqtts"
    assert request.cert_chain[0].serial_number == device.cert.serial_number


def test_persistent_session_is_reported_on_reconnect(
    server: ServerThread, device: Issued, pki: PKI
) -> None:
    with make_transport(server, device, pki.root_path) as transport:
        assert connect(transport).session_present is False
        transport.disconnect()
        assert connect(transport).session_present is True


@pytest.mark.parametrize("code", [5, 4, 3])
def test_connack_refusal_is_one_event_and_a_fresh_attempt_works(
    server: ServerThread, endpoint: RecordingEndpoint, device: Issued, pki: PKI, code: int
) -> None:
    endpoint.connack_code = code
    with make_transport(server, device, pki.root_path) as transport:
        transport.start_connect()
        events = poll_until(transport, first(ConnectRefused))
        assert events == [ConnectRefused(return_code=code)]
        # Nothing else follows (no ConnectionLost for the same failure).
        assert transport.poll(0.3) == []
        assert not transport.connected
        endpoint.connack_code = 0
        assert connect(transport) == Connected(session_present=False)


def test_untrusted_server_certificate(server: ServerThread, device: Issued, rogue: PKI) -> None:
    with make_transport(server, device, rogue.root_path) as transport:
        transport.start_connect()
        events = poll_until(transport, first(ConnectionLost))
        assert len(events) == 1
        assert isinstance(events[0], ConnectionLost)
        assert "certificate" in events[0].reason
        assert not transport.connected


def test_server_certificate_for_another_address(
    pki: PKI, endpoint: RecordingEndpoint, device: Issued
) -> None:
    wrong = pki.issue_server("127.0.0.9", ip_addresses=["127.0.0.9"])
    thread = ServerThread(endpoint, server_context(pki, wrong)).start(HOST)
    try:
        with make_transport(thread, device, pki.root_path) as transport:
            transport.start_connect()
            (event,) = poll_until(transport, first(ConnectionLost))
            assert isinstance(event, ConnectionLost)
            assert "mismatch" in event.reason
            assert "127.0.0.1" in event.reason
    finally:
        thread.stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_server_below_tls_1_2_is_refused(
    pki: PKI, endpoint: RecordingEndpoint, device: Issued
) -> None:
    issued = pki.issue_server(HOST, ip_addresses=[HOST])

    def tls_1_1_only() -> ssl.SSLContext:
        context = server_context(pki, issued)()
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 would not offer 1.1 otherwise
        return context

    thread = ServerThread(endpoint, tls_1_1_only).start(HOST)
    try:
        with make_transport(thread, device, pki.root_path) as transport:
            transport.start_connect()
            (event,) = poll_until(transport, first(ConnectionLost))
            assert isinstance(event, ConnectionLost)
            assert "TLS handshake failed" in event.reason
            assert endpoint.requests.empty()  # no MQTT CONNECT got through
    finally:
        thread.stop()


def test_server_refusing_our_client_certificate(server: ServerThread, rogue: PKI, pki: PKI) -> None:
    stranger = rogue.issue_device("dev-stranger")
    with make_transport(server, stranger, pki.root_path) as transport:
        transport.start_connect()
        (event,) = poll_until(transport, first(ConnectionLost))
        assert isinstance(event, ConnectionLost)


def test_publish_qos1_is_acked_by_mid(
    server: ServerThread, endpoint: RecordingEndpoint, device: Issued, pki: PKI
) -> None:
    with make_transport(server, device, pki.root_path) as transport:
        connect(transport)
        mids = [
            transport.publish(f"devices/dev-transport/messages/events/n={i}", b'{"n": %d}' % i)
            for i in range(5)
        ]
        assert len(set(mids)) == 5
        events = poll_until(
            transport, lambda ev: {e.mid for e in ev if isinstance(e, PublishAcked)} == set(mids)
        )
        assert all(isinstance(e, PublishAcked) for e in events)
    received = [endpoint.publishes.get(timeout=DEADLINE_S) for _ in range(5)]
    assert received == [
        (f"devices/dev-transport/messages/events/n={i}", b'{"n": %d}' % i, 1) for i in range(5)
    ]


def test_subscribe_and_receive(
    server: ServerThread, endpoint: RecordingEndpoint, device: Issued, pki: PKI
) -> None:
    endpoint.refused_filters.add("forbidden/#")
    with make_transport(server, device, pki.root_path) as transport:
        connect(transport)
        mid = transport.subscribe("$iothub/methods/POST/#", qos=1)
        refused_mid = transport.subscribe("forbidden/#", qos=1)
        events = poll_until(transport, lambda ev: sum(isinstance(e, Subscribed) for e in ev) == 2)
        assert Subscribed(mid=mid, granted_qos=(1,)) in events
        assert Subscribed(mid=refused_mid, granted_qos=(0x80,)) in events
        server.publish_to("dev-transport", "$iothub/methods/POST/reprovision/?$rid=7", b"{}")
        events = poll_until(transport, first(MessageReceived))
        assert events == [
            MessageReceived(topic="$iothub/methods/POST/reprovision/?$rid=7", payload=b"{}")
        ]


def test_server_drop_is_connection_lost(
    server: ServerThread, endpoint: RecordingEndpoint, device: Issued, pki: PKI
) -> None:
    with make_transport(server, device, pki.root_path) as transport:
        connect(transport)
        server.drop("dev-transport", "device disabled")
        (event,) = poll_until(transport, first(ConnectionLost))
        assert isinstance(event, ConnectionLost)
        # paho's own reconnect is off: nothing happens until the lifecycle asks.
        assert transport.poll(0.3) == []
        assert not transport.connected
        assert endpoint.requests.qsize() == 1
        assert "after connect" in event.reason
        assert not transport.connected
        with pytest.raises(TransportError, match="not connected"):
            transport.publish("t", b"x")
        # The lifecycle may connect again on the same transport.
        assert isinstance(connect(transport), Connected)


def test_websockets(
    server: ServerThread, endpoint: RecordingEndpoint, device: Issued, pki: PKI
) -> None:
    with make_transport(server, device, pki.root_path, websockets=True) as transport:
        assert isinstance(connect(transport), Connected)
        mid = transport.publish("devices/dev-transport/messages/events/", b"over websockets")
        assert poll_until(transport, first(PublishAcked)) == [PublishAcked(mid=mid)]
        sub = transport.subscribe("devices/dev-transport/messages/devicebound/#")
        poll_until(transport, first(Subscribed))
        server.publish_to("dev-transport", "devices/dev-transport/messages/devicebound/x", b"c2d")
        assert poll_until(transport, first(MessageReceived)) == [
            MessageReceived(topic="devices/dev-transport/messages/devicebound/x", payload=b"c2d")
        ]
        assert sub > 0
    request = endpoint.requests.get(timeout=DEADLINE_S)
    assert request.transport == "wss"
    assert endpoint.publishes.get(timeout=DEADLINE_S)[1] == b"over websockets"


def test_websocket_path_that_the_server_does_not_serve(
    server: ServerThread, device: Issued, pki: PKI
) -> None:
    host, port = server.ws_address
    wrong = MqttEndpoint(
        host=host,
        port=port,
        client_id="dev-transport",
        username="u",
        websockets=True,
        ws_path="/mqtt",
    )
    with MqttTransport(wrong, tls_for(device, pki.root_path), connect_timeout_s=5) as transport:
        transport.start_connect()
        (event,) = poll_until(transport, first(ConnectionLost))
        assert isinstance(event, ConnectionLost)


def test_disconnect_is_clean_and_silent(
    server: ServerThread, endpoint: RecordingEndpoint, device: Issued, pki: PKI
) -> None:
    with make_transport(server, device, pki.root_path) as transport:
        connect(transport)
        transport.disconnect()
        assert transport.poll(0.2) == []
        assert not transport.connected
    assert "DISCONNECT" in endpoint.disconnects.get(timeout=DEADLINE_S).upper()


def test_keep_alive_keeps_an_idle_connection_up(
    server: ServerThread, device: Issued, pki: PKI
) -> None:
    # The server drops a client silent for 1.5 x keep-alive; paho's PINGREQ prevents it.
    with make_transport(server, device, pki.root_path, keep_alive_s=1) as transport:
        connect(transport)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            assert transport.poll(end - time.monotonic()) == []
        assert transport.connected
        mid = transport.publish("devices/dev-transport/messages/events/", b"still here")
        assert poll_until(transport, first(PublishAcked)) == [PublishAcked(mid=mid)]


def _pings(server: ServerThread, client_id: str) -> int:
    def count() -> int:
        connection = server.server.connection(client_id)
        assert connection is not None, f"{client_id} is not connected"
        return int(connection.ping_requests)

    return server.call(count)


def test_publishing_within_the_keep_alive_needs_no_pingreq(
    server: ServerThread, device: Issued, pki: PKI
) -> None:
    # MQTT asks for a PINGREQ only after a keep-alive with nothing sent: a QoS 1 PUBLISH
    # (and its PUBACK) every 0.4 s of a 1 s keep-alive is traffic enough. Without the
    # transport's stamp paho pings once a keep-alive however busy the link is.
    with make_transport(server, device, pki.root_path, keep_alive_s=1) as transport:
        connect(transport)
        for n in range(6):  # 2.4 s: more than two keep-alives
            mid = transport.publish("devices/dev-transport/messages/events/", b"%d" % n)
            end = time.monotonic() + 0.4
            seen = poll_until(transport, first(PublishAcked))
            assert seen == [PublishAcked(mid=mid)]
            while (left := end - time.monotonic()) > 0:
                assert transport.poll(left) == []
        assert transport.connected
        assert _pings(server, "dev-transport") == 0
        # Silent from here on: a keep-alive later it pings again.
        end = time.monotonic() + 2.0
        while (left := end - time.monotonic()) > 0:
            assert transport.poll(left) == []
        assert transport.connected
        assert _pings(server, "dev-transport") >= 1


def test_nothing_listening(device: Issued, pki: PKI) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        endpoint = MqttEndpoint(host=HOST, port=port, client_id="d", username="u")
        with MqttTransport(endpoint, tls_for(device, pki.root_path)) as transport:
            transport.start_connect()
            (event,) = poll_until(transport, first(ConnectionLost))
            assert isinstance(event, ConnectionLost)
            assert "ECONNREFUSED" in event.reason


def test_silent_server_times_out(device: Issued, pki: PKI) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)  # the kernel accepts TCP; nobody ever speaks TLS
        endpoint = MqttEndpoint(
            host=HOST, port=listener.getsockname()[1], client_id="d", username="u"
        )
        with MqttTransport(
            endpoint, tls_for(device, pki.root_path), connect_timeout_s=0.3
        ) as transport:
            started = time.monotonic()
            transport.start_connect()
            (event,) = poll_until(transport, first(ConnectionLost))
            assert isinstance(event, ConnectionLost)
            assert "no answer within 0.3 s" in event.reason
            assert time.monotonic() - started < 3.0


def test_unresolvable_host(device: Issued, pki: PKI) -> None:
    endpoint = MqttEndpoint(host="no-such-host.invalid", port=8883, client_id="d", username="u")
    with MqttTransport(endpoint, tls_for(device, pki.root_path)) as transport:
        transport.start_connect()
        (event,) = poll_until(transport, first(ConnectionLost))
        assert isinstance(event, ConnectionLost)
        assert "cannot resolve" in event.reason


def test_misuse_raises_transport_error(
    server: ServerThread, device: Issued, pki: PKI, tmp_path: Path
) -> None:
    transport = make_transport(server, device, pki.root_path)
    with pytest.raises(TransportError, match="not connected"):
        transport.publish("t", b"x")
    with pytest.raises(TransportError, match="not connected"):
        transport.subscribe("t/#")
    transport.start_connect()
    with pytest.raises(TransportError, match="disconnect"):
        transport.start_connect()
    transport.close()
    with pytest.raises(TransportError, match="closed"):
        transport.start_connect()
    with pytest.raises(TransportError, match="closed"):
        transport.poll(0)
    missing = TlsSettings(
        cert_chain_path=tmp_path / "none.pem",
        key_path=device.key_path,
        key_passphrase=None,
        ca_path=pki.root_path,
    )
    with pytest.raises(TransportError, match="client certificate"):
        MqttTransport(MqttEndpoint(host=HOST, port=1, client_id="d", username="u"), missing)


def test_passphrase_protected_key(server: ServerThread, pki: PKI) -> None:
    locked = pki.issue_device("dev-locked", key_passphrase=b"s3cret")
    tls = TlsSettings(
        cert_chain_path=locked.chain_path,
        key_path=locked.key_path,
        key_passphrase=b"s3cret",
        ca_path=pki.root_path,
    )
    host, port = server.address
    endpoint = MqttEndpoint(host=host, port=port, client_id="dev-locked", username="u")
    with MqttTransport(endpoint, tls) as transport:
        assert isinstance(connect(transport), Connected)


def test_wake_interrupts_an_idle_poll(device: Issued, pki: PKI) -> None:
    endpoint = MqttEndpoint(host=HOST, port=1, client_id="d", username="u")
    with MqttTransport(endpoint, tls_for(device, pki.root_path)) as transport:
        polling = threading.Event()
        result: queue.Queue[tuple[float, list[TransportEvent]]] = queue.Queue()

        def idle_poll() -> None:
            polling.set()
            started = time.monotonic()
            events = transport.poll(30.0)
            result.put((time.monotonic() - started, events))

        worker = threading.Thread(target=idle_poll)
        worker.start()
        assert polling.wait(DEADLINE_S)
        transport.wake()
        elapsed, events = result.get(timeout=DEADLINE_S)
        worker.join(DEADLINE_S)
        assert events == []
        assert elapsed < 25.0


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def test_transport_starts_no_thread(server: ServerThread, device: Issued, pki: PKI) -> None:
    before_python = set(threading.enumerate())
    before_os = _thread_count()
    with make_transport(server, device, pki.root_path, websockets=True) as transport:
        connect(transport)
        transport.subscribe("$iothub/twin/res/#")
        mid = transport.publish("devices/dev-transport/messages/events/", b"x")
        poll_until(transport, lambda ev: PublishAcked(mid=mid) in ev)
        assert set(threading.enumerate()) == before_python
        assert _thread_count() == before_os
        server.drop("dev-transport")
        poll_until(transport, first(ConnectionLost))
        assert _thread_count() == before_os
    assert set(threading.enumerate()) == before_python
