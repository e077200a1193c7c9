"""Test support for devcloud's MQTT server: a server thread, a recording endpoint, clients.

:class:`ServerThread` runs an :class:`MQTTServer` on its own event loop in a thread, so
blocking clients (paho, raw sockets) can talk to it from the test thread.
:class:`RecordingEndpoint` records everything the server tells it and lets a test wait
for a condition with a deadline. :class:`PahoClient` wraps paho-mqtt 2.x (threaded
loop, no automatic reconnect); :class:`RawClient` is a TLS socket speaking bytes, for
malformed input and exact packet checks.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devcloud.mqtt.codec import Connect, Decoder, MQTTError, Packet, encode
from devcloud.mqtt.endpoint import Connection, ConnectRequest, DeviceSession, ProtocolViolation
from devcloud.mqtt.server import IOT_HUB_WEBSOCKET_PATH, MQTTConnection, MQTTServer
from devcloud.pki import PKI, Issued
from devcloud.registry import Registry
from devcloud.tls import ServerTLS

T = TypeVar("T")
TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"


def server_tls_factory(pki: PKI) -> ServerTLS:
    """devcloud's own per-connection TLS for a server on 127.0.0.1, trusting ``pki``.

    Client certificate required, chains and CRLs checked; a revocation is seen by the
    next connection.
    """
    return ServerTLS(pki, Registry(()), "test", LOOPBACK)


def client_tls_context(ca_path: Path, identity: Issued | None) -> ssl.SSLContext:
    """A device-side context trusting ``ca_path``, presenting ``identity`` if given."""
    context = ssl.create_default_context(cafile=str(ca_path))
    if identity is not None:
        context.load_cert_chain(identity.chain_path, identity.key_path)
    return context


# --- the server side ---------------------------------------------------------------------


class ServerThread:
    """An :class:`MQTTServer` on a private event loop in a daemon thread."""

    def __init__(
        self,
        endpoint: Any,
        tls: Callable[[], ssl.SSLContext],
        *,
        websockets: bool = True,
        host: str = LOOPBACK,
        **options: Any,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = MQTTServer(endpoint, tls, **options)
        self._websockets = websockets
        self._host = host

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.run(self.server.start(self._host, 0, 0 if self._websockets else None))
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(TIMEOUT_S)
            self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT_S)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(*args)`` on the server's loop and return its result."""

        async def call() -> T:
            return function(*args)

        return self.run(call())

    @property
    def address(self) -> tuple[str, int]:
        """The MQTT/TLS address."""
        return self.server.address

    @property
    def ws_address(self) -> tuple[str, int]:
        """The MQTT/WebSockets address."""
        address = self.server.ws_address
        assert address is not None
        return address


@dataclass
class RecordingSession:
    """A :class:`DeviceSession` that records what the server hands it."""

    endpoint: RecordingEndpoint
    request: ConnectRequest
    connection: MQTTConnection
    subscribed: list[tuple[str, int]] = field(default_factory=list)
    published: list[tuple[str, bytes, int]] = field(default_factory=list)
    disconnect_reasons: list[str] = field(default_factory=list)

    @property
    def disconnect_reason(self) -> str | None:
        """The reason ``on_disconnect`` was given, None while connected."""
        return self.disconnect_reasons[0] if self.disconnect_reasons else None

    def on_subscribe(self, topic_filter: str, qos: int) -> int:
        """Grant what was asked, except filters the endpoint refuses or overrides."""
        with self.endpoint.changed:
            self.subscribed.append((topic_filter, qos))
            self.endpoint.changed.notify_all()
        if topic_filter in self.endpoint.grants:
            return self.endpoint.grants[topic_filter]
        return 0x80 if topic_filter in self.endpoint.refused_filters else qos

    def on_publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Record; raise :class:`ProtocolViolation` for the endpoint's forbidden topics."""
        if topic in self.endpoint.forbidden_topics:
            raise ProtocolViolation(f"publishing to {topic} is not allowed")
        with self.endpoint.changed:
            self.published.append((topic, payload, qos))
            self.endpoint.changed.notify_all()

    def on_disconnect(self, reason: str) -> None:
        """Record the reason."""
        with self.endpoint.changed:
            self.disconnect_reasons.append(reason)
            self.endpoint.changed.notify_all()


class RecordingEndpoint:
    """An :class:`Endpoint` that accepts (or refuses with ``connack_codes``) and records."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.requests: list[ConnectRequest] = []
        self.sessions: list[RecordingSession] = []
        #: client id -> CONNACK code to refuse it with.
        self.connack_codes: dict[str, int] = {}
        self.refused_filters: set[str] = set()
        #: filter -> what on_subscribe returns, whatever was requested.
        self.grants: dict[str, int] = {}
        self.forbidden_topics: set[str] = set()
        self.raise_in_authenticate = False

    def authenticate(
        self, request: ConnectRequest, connection: Connection
    ) -> tuple[int, DeviceSession | None]:
        """Record the request; accept unless told otherwise."""
        with self.changed:
            self.requests.append(request)
            self.changed.notify_all()
        if self.raise_in_authenticate:
            raise RuntimeError("authenticate failed on purpose")
        code = self.connack_codes.get(request.client_id, 0)
        if code:
            return code, None
        assert isinstance(connection, MQTTConnection)
        session = RecordingSession(self, request, connection)
        with self.changed:
            self.sessions.append(session)
            self.changed.notify_all()
        return 0, session

    def wait(self, predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
        """Wait until ``predicate()`` (evaluated under the lock) holds."""
        with self.changed:
            if not self.changed.wait_for(predicate, timeout_s):
                raise AssertionError(f"endpoint condition not met within {timeout_s} s")

    def session(self, client_id: str, index: int = -1) -> RecordingSession:
        """The ``index``-th session of ``client_id`` (waits for it to exist)."""
        self.wait(lambda: any(s.request.client_id == client_id for s in self.sessions))
        with self.changed:
            return [s for s in self.sessions if s.request.client_id == client_id][index]

    def wait_disconnected(self, session: RecordingSession) -> str:
        """Wait for ``session.on_disconnect`` and return its reason."""
        self.wait(lambda: session.disconnect_reason is not None)
        assert len(session.disconnect_reasons) == 1, session.disconnect_reasons
        return session.disconnect_reasons[0]


# --- clients -------------------------------------------------------------------------------


class RawClient:
    """A TLS socket to the server that sends bytes and decodes what comes back."""

    def __init__(
        self,
        address: tuple[str, int],
        ca_path: Path,
        identity: Issued | None,
    ) -> None:
        context = client_tls_context(ca_path, identity)
        plain = socket.create_connection(address, timeout=TIMEOUT_S)
        self.sock = context.wrap_socket(plain, server_hostname=address[0])
        self._decoder = Decoder()
        self._packets: list[Packet] = []

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (no DISCONNECT)."""
        self.sock.close()

    def send(self, data: bytes | Packet) -> None:
        """Send raw bytes or an encoded packet."""
        self.sock.sendall(data if isinstance(data, bytes) else encode(data))

    def connect(self, client_id: str, **fields: Any) -> Packet | None:
        """Send CONNECT and return the server's answer (None if it closed)."""
        self.send(Connect(client_id, **fields))
        return self.receive()

    def receive(self) -> Packet | None:
        """The next packet from the server, or None once it closed the connection."""
        while not self._packets:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                return None
            if not data:
                return None
            self._packets += self._decoder.feed(data)
        return self._packets.pop(0)

    def read_all(self) -> bytes:
        """Raw bytes until the server closes (for non-MQTT answers)."""
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def expect_closed(self) -> None:
        """Assert that the server sends nothing more and closes the connection."""
        packet = self.receive()
        assert packet is None, f"expected the server to close, got {packet!r}"


def refused_at_tls(address: tuple[str, int], ca_path: Path, identity: Issued | None) -> bool:
    """Try TLS + CONNECT; True if the server refused before any MQTT answer.

    With TLS 1.3 the client's handshake may complete before the server has checked
    the client certificate, so the refusal can show up on the first read.
    """
    try:
        client = RawClient(address, ca_path, identity)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    with client:
        try:
            client.send(Connect("refused-device"))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True
        try:
            return client.receive() is None
        except MQTTError:
            return False


@dataclass
class _Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class PahoClient:
    """paho-mqtt 2.x over TLS (or WebSockets), threaded loop, no automatic reconnect."""

    def __init__(
        self,
        client_id: str,
        identity: Issued,
        ca_path: Path,
        *,
        clean_session: bool = True,
        websockets: bool = False,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            transport="websockets" if websockets else "tcp",
            reconnect_on_failure=False,
        )
        if websockets:
            self.client.ws_set_options(path=IOT_HUB_WEBSOCKET_PATH)
        self.client.tls_set(
            ca_certs=str(ca_path), certfile=str(identity.chain_path), keyfile=str(identity.key_path)
        )
        self.connacks: queue.Queue[tuple[bool, int, bool]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[_Received] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.connacks.put((not reason.is_failure, reason.value, bool(flags.session_present)))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        self.subacks.put([reason.value for reason in reasons])

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self.messages.put(_Received(message.topic, message.payload, message.qos, message.retain))

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnected.set()

    def connect(self, address: tuple[str, int]) -> tuple[bool, int, bool]:
        """Connect and return ``(accepted, reason code value, session_present)``."""
        self.client.connect(address[0], address[1], keepalive=60)
        self.client.loop_start()
        return self.connacks.get(timeout=TIMEOUT_S)

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        """Subscribe and return the granted codes from SUBACK."""
        result, _ = self.client.subscribe(topic_filter, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return self.subacks.get(timeout=TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait until it is sent (QoS 0) or acknowledged (QoS 1)."""
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()

    def message(self) -> _Received:
        """The next message received."""
        return self.messages.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
