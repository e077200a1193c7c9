"""An asyncio MQTT 3.1.1 server over TLS (and WebSockets) that serves one Endpoint.

Theory of operation
-------------------
:class:`MQTTServer` listens on a TCP port (and optionally a second one for
MQTT-over-WebSockets). Each accepted socket is paused at once, then a task calls the
``tls()`` factory for a fresh :class:`ssl.SSLContext` and runs the server-side TLS
handshake with ``loop.start_tls``, so trust anchors and CRLs can change between
connections. A failed handshake (no client certificate, unknown CA, expired, revoked)
is logged and that socket closed; nothing else is affected.

After the handshake every connection is an :class:`MQTTConnection`: an
:class:`asyncio.Protocol` that feeds received bytes through the WebSocket layer
(``wss`` only, :mod:`devcloud.mqtt.websocket`) into a :class:`~devcloud.mqtt.codec.Decoder`
and handles each packet synchronously, in order. There is no per-connection reader
task: a slow or hostile client costs a buffer, never the event loop. Writes are
non-blocking; when the transport's buffer is high the connection stops reading from
that client, and over ``max_write_buffer`` bytes it is dropped as a slow consumer.

Per connection: ``HANDSHAKE`` (TLS / WebSocket upgrade) -> ``AWAIT_CONNECT`` (the
first packet must be CONNECT within ``connect_timeout_s``) -> ``CONNECTED`` ->
``CLOSED``. CONNECT: protocol ("MQTT", 4) or CONNACK 1; non-empty client id or
CONNACK 2; then :meth:`Endpoint.authenticate` decides. On acceptance a connection with
the same client id is closed ("kicked", after ``authenticate`` accepted the new one and
before its CONNACK), the MQTT session is taken over (clean_session 0: the client id's
subscriptions and unacknowledged QoS 1 messages, kept by the server; clean_session 1:
a fresh one, and any stored one is discarded), CONNACK is sent, and unacknowledged
QoS 1 messages are sent again with DUP set.

Keep-alive: with a non-zero keep-alive, 1.5 times that long without a complete packet
closes the connection. SUBSCRIBE asks :meth:`DeviceSession.on_subscribe` per filter
(requested QoS capped at 1, as IoT Hub does); device PUBLISH goes to
:meth:`DeviceSession.on_publish`, and QoS 1 is acknowledged only after it returned
(and, with ``puback_delay_s``, that much later: a simulated network round trip).
:class:`~devcloud.mqtt.endpoint.ProtocolViolation` from a session, a malformed or
oversize packet, a second CONNECT, or a packet only a server may send closes the
connection; any other exception from service code is logged and closes it too.

:meth:`MQTTConnection.publish` and :meth:`MQTTConnection.close` may be called from any
thread; off the event loop they are handed to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable
from enum import Enum
from typing import Any

from cryptography import x509

from devcloud.mqtt.codec import (
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    MQTTError,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode,
    validate_topic_name,
)
from devcloud.mqtt.endpoint import (
    CONNACK_ACCEPTED,
    CONNACK_IDENTIFIER_REJECTED,
    CONNACK_SERVER_UNAVAILABLE,
    CONNACK_UNACCEPTABLE_PROTOCOL,
    ConnectRequest,
    DeviceSession,
    Endpoint,
    ProtocolViolation,
)
from devcloud.mqtt.websocket import ServerWebSocket, WebSocketError

__all__ = ["IOT_HUB_WEBSOCKET_PATH", "MQTTConnection", "MQTTServer", "topic_matches"]

log = logging.getLogger(__name__)

#: The path Azure IoT Hub and DPS serve MQTT-over-WebSockets on.
IOT_HUB_WEBSOCKET_PATH = "/$iothub/websocket"
_SUBACK_FAILURE = 0x80
_CLOSE_LINGER_S = 2.0  # after close(), how long TLS shutdown may take before abort()


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True if ``topic`` matches ``topic_filter`` (``+``, ``#``; MQTT 3.1.1 section 4.7).

    A filter starting with a wildcard does not match a topic starting with ``$``.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    topic_levels = topic.split("/")
    filter_levels = topic_filter.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


@dataclasses.dataclass
class _Session:
    """The MQTT session state the server keeps per client id (clean_session 0)."""

    subscriptions: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Unacknowledged server-to-device QoS 1 messages by packet id, oldest first.
    inflight: dict[int, Publish] = dataclasses.field(default_factory=dict)
    last_packet_id: int = 0

    def allocate_packet_id(self) -> int | None:
        for step in range(1, 65536):
            candidate = (self.last_packet_id + step - 1) % 65535 + 1
            if candidate not in self.inflight:
                self.last_packet_id = candidate
                return candidate
        return None


class _Phase(Enum):
    HANDSHAKE = "handshake"
    AWAIT_CONNECT = "await-connect"
    CONNECTED = "connected"
    CLOSED = "closed"


def _verified_chain(ssl_object: Any) -> list[x509.Certificate]:
    """The peer's verified chain, leaf first (falls back to the leaf alone)."""
    ders: list[bytes] = []
    public = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13+
    private = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    try:
        if public is not None:
            ders = [bytes(der) for der in public()]
        elif private is not None:
            import _ssl

            ders = [cert.public_bytes(_ssl.ENCODING_DER) for cert in private()]
    except (AttributeError, ValueError, ssl.SSLError):
        ders = []
    if not ders and ssl_object is not None:
        leaf = ssl_object.getpeercert(binary_form=True)
        ders = [leaf] if leaf else []
    return [x509.load_der_x509_certificate(der) for der in ders]


class MQTTConnection(asyncio.Protocol):
    """One device connection; implements :class:`devcloud.mqtt.endpoint.Connection`."""

    def __init__(self, server: MQTTServer, transport_name: str, raw: asyncio.Transport):
        self._server = server
        self._loop = server.loop
        #: ``"mqtts"`` or ``"wss"``.
        self.transport_name = transport_name
        self.remote_address: tuple[str, int] = raw.get_extra_info("peername")[:2]
        self.local_address: tuple[str, int] = raw.get_extra_info("sockname")[:2]
        #: The verified client chain, leaf first (set after the TLS handshake).
        self.cert_chain: list[x509.Certificate] = []
        self.clean_session = True
        self.keep_alive_s = 0
        #: Why the connection closed, once it has.
        self.close_reason: str | None = None
        #: PINGREQs received on this connection (keep-alive traffic, for tests).
        self.ping_requests = 0
        self._client_id = ""
        self._raw: asyncio.Transport | None = raw
        self._transport: asyncio.Transport | None = None
        self._early: list[bytes] = []  # bytes that arrived before attach()
        self._phase = _Phase.HANDSHAKE
        self._decoder = Decoder(server.max_packet_size)
        self._ws = (
            ServerWebSocket(server.ws_path, "mqtt", max_frame_size=server.max_packet_size)
            if transport_name == "wss"
            else None
        )
        self._device_session: DeviceSession | None = None
        self._session = _Session()
        self._last_packet_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] = self._loop.create_future()

    # --- the Connection contract -------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The client id from CONNECT ("" before it)."""
        return self._client_id

    @property
    def connected(self) -> bool:
        """True between an accepting CONNACK and the close."""
        return self._phase is _Phase.CONNECTED

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (the socket may still be shutting down)."""
        return self._phase is _Phase.CLOSED

    @property
    def subscriptions(self) -> dict[str, int]:
        """A copy of this connection's granted subscriptions (filter -> QoS)."""
        return dict(self._session.subscriptions)

    @property
    def unacknowledged(self) -> int:
        """How many server-to-device QoS 1 messages await PUBACK."""
        return len(self._session.inflight)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Send a PUBLISH if one of this connection's subscriptions matches ``topic``.

        Delivered at the lower of ``qos`` and the granted QoS; QoS 1 messages stay in the
        session until PUBACK. Dropped (logged) if nothing matches or the connection is
        not connected. Raises :class:`MalformedPacket` for an invalid topic or QoS.
        """
        validate_topic_name(topic)
        if qos not in (0, 1):
            raise MalformedPacket(f"server PUBLISH QoS {qos} is not supported")
        if not self._on_loop():
            self._loop.call_soon_threadsafe(self.publish, topic, bytes(payload), qos)
            return
        if self._phase is not _Phase.CONNECTED:
            log.debug("%s: not connected, dropping PUBLISH to %s", self, topic)
            return
        granted = max(
            (q for f, q in self._session.subscriptions.items() if topic_matches(f, topic)),
            default=None,
        )
        if granted is None:
            log.debug("%s: no subscription matches %s, dropped", self, topic)
            return
        if min(qos, granted) == 0:
            self._send(Publish(topic, bytes(payload), 0))
            return
        packet_id = self._session.allocate_packet_id()
        if packet_id is None:
            self.close("65535 QoS 1 messages unacknowledged")
            return
        message = Publish(topic, bytes(payload), 1, packet_id=packet_id)
        self._session.inflight[packet_id] = message
        self._send(message)

    def close(self, reason: str) -> None:
        """Close from the server side; the session's ``on_disconnect(reason)`` is called."""
        if not self._on_loop():
            self._loop.call_soon_threadsafe(self.close, reason)
            return
        if self._phase is _Phase.CLOSED:
            return
        was_connected = self._phase is _Phase.CONNECTED
        self._phase = _Phase.CLOSED
        self.close_reason = reason
        self._cancel_timer()
        log.info("%s: closed: %s", self, reason)
        if self._transport is not None:
            if self._ws is not None and self._ws.open:
                self._transport.write(self._ws.close(1000))
            self._transport.close()
            self._linger = self._loop.call_later(_CLOSE_LINGER_S, self._transport.abort)
        elif self._raw is not None:
            self._raw.abort()
        self._server._forget(self)
        if was_connected and self._device_session is not None:
            try:
                self._device_session.on_disconnect(reason)
            except Exception:
                log.exception("%s: on_disconnect raised", self)

    async def wait_closed(self) -> None:
        """Wait until the socket is gone."""
        await asyncio.shield(self._lost)

    def __repr__(self) -> str:
        who = self._client_id or "?"
        host, port = self.remote_address
        return f"<{self._server.name} {self.transport_name} {who} from {host}:{port}>"

    # --- asyncio.Protocol ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Asyncio callback: bytes from the TLS layer."""
        if self._transport is None:
            self._early.append(data)
        else:
            self._receive(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """Asyncio callback: the socket is closed."""
        self.close(f"connection lost ({exc})" if exc else "connection closed by the client")
        if self._linger is not None:
            self._linger.cancel()
        if not self._lost.done():
            self._lost.set_result(None)
        self._server._discard(self)

    def pause_writing(self) -> None:
        """Asyncio callback: the peer reads slowly; stop reading its requests."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        """Asyncio callback: the write buffer drained."""
        if self._transport is not None and self._phase is not _Phase.CLOSED:
            self._transport.resume_reading()

    # --- internals -------------------------------------------------------------------

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _abandon(self, raw: asyncio.Transport, reason: str) -> None:
        """The TLS handshake failed or was cancelled: drop the socket."""
        raw.abort()
        self.close(reason)
        if not self._lost.done():
            self._lost.set_result(None)
        self._server._discard(self)

    def _attach(self, transport: asyncio.Transport) -> None:
        """The TLS handshake succeeded: start reading packets."""
        self._transport = transport
        self._raw = None
        self.cert_chain = _verified_chain(transport.get_extra_info("ssl_object"))
        if self._phase is _Phase.CLOSED:  # closed while handshaking
            transport.abort()
            return
        self._phase = _Phase.AWAIT_CONNECT
        self._timer = self._loop.call_later(self._server.connect_timeout_s, self._connect_timeout)
        early, self._early = self._early, []
        for data in early:
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        if self._phase is _Phase.CLOSED:
            return
        ws_closed = False
        if self._ws is not None:
            try:
                received = self._ws.feed(data)
            except WebSocketError as exc:
                self._write(exc.reply)
                self.close(str(exc))
                return
            self._write(received.reply)
            data, ws_closed = received.data, received.closed
        if data:
            try:
                packets = self._decoder.feed(data)
            except MQTTError as exc:
                self.close(str(exc))
                return
            for packet in packets:
                if self.closed:
                    return
                self._last_packet_at = self._loop.time()
                self._handle(packet)
        if ws_closed:
            self.close("WebSocket closed by the client")

    def _handle(self, packet: Packet) -> None:
        log.debug("%s: received %s", self, type(packet).__name__)
        if self._phase is _Phase.AWAIT_CONNECT:
            if isinstance(packet, Connect):
                self._on_connect(packet)
            else:
                self.close(f"first packet was {type(packet).__name__}, not CONNECT")
            return
        match packet:
            case Publish():
                self._on_publish(packet)
            case PubAck():
                if self._session.inflight.pop(packet.packet_id, None) is None:
                    log.debug("%s: PUBACK for unknown packet id %d", self, packet.packet_id)
            case Subscribe():
                self._on_subscribe(packet)
            case Unsubscribe():
                for topic_filter in packet.topics:
                    self._session.subscriptions.pop(topic_filter, None)
                self._send(UnsubAck(packet.packet_id))
            case PingReq():
                self.ping_requests += 1
                self._send(PingResp())
            case Disconnect():
                self.close("client sent DISCONNECT")
            case Connect():
                self.close("second CONNECT on one connection")
            case _:
                self.close(f"{type(packet).__name__} is not a client packet")

    def _on_connect(self, packet: Connect) -> None:
        if (packet.protocol_name, packet.protocol_level) != ("MQTT", 4):
            protocol = f"{packet.protocol_name!r} level {packet.protocol_level}"
            self._refuse(CONNACK_UNACCEPTABLE_PROTOCOL, f"unacceptable protocol {protocol}")
            return
        if not packet.client_id:
            self._refuse(CONNACK_IDENTIFIER_REJECTED, "empty client id")
            return
        self._client_id = packet.client_id
        self.clean_session = packet.clean_session
        self.keep_alive_s = packet.keep_alive_s
        request = ConnectRequest(
            client_id=packet.client_id,
            username=packet.username,
            password=packet.password,
            clean_session=packet.clean_session,
            keep_alive_s=packet.keep_alive_s,
            cert_chain=tuple(self.cert_chain),
            local_address=self.local_address,
            transport=self.transport_name,
        )
        try:
            code, session = self._server.endpoint.authenticate(request, self)
        except Exception:
            log.exception("%s: authenticate raised", self)
            code, session = CONNACK_SERVER_UNAVAILABLE, None
        if code == CONNACK_ACCEPTED and session is None:
            log.error("%s: authenticate accepted without a session", self)
            code = CONNACK_SERVER_UNAVAILABLE
        if not 0 <= code <= 5:
            log.error("%s: authenticate returned CONNACK code %r", self, code)
            code = CONNACK_SERVER_UNAVAILABLE
        if code != CONNACK_ACCEPTED or self._phase is _Phase.CLOSED:
            self._refuse(code, f"CONNECT refused with CONNACK {code}")
            return
        self._device_session = session
        self._session, present = self._server._take_over(self)
        self._phase = _Phase.CONNECTED
        self._send(ConnAck(session_present=present, return_code=CONNACK_ACCEPTED))
        log.info(
            "%s: connected (clean session %d, present %d)", self, packet.clean_session, present
        )
        self._cancel_timer()
        if packet.keep_alive_s:
            self._timer = self._loop.call_later(packet.keep_alive_s * 1.5, self._keep_alive_check)
        for message in list(self._session.inflight.values()):
            if self._phase is _Phase.CONNECTED:
                self._send(dataclasses.replace(message, dup=True))

    def _refuse(self, code: int, reason: str) -> None:
        if self._phase is not _Phase.CLOSED:
            self._send(ConnAck(session_present=False, return_code=code))
        self.close(reason)

    def _on_publish(self, packet: Publish) -> None:
        assert self._device_session is not None
        try:
            self._device_session.on_publish(packet.topic, packet.payload, packet.qos)
        except ProtocolViolation as exc:
            self.close(f"protocol violation: {exc}")
            return
        except Exception:
            log.exception("%s: on_publish raised", self)
            self.close("service error in on_publish")
            return
        if packet.packet_id is not None and self._phase is _Phase.CONNECTED:
            delay_s = self._server.puback_delay_s
            if delay_s > 0:
                self._loop.call_later(delay_s, self._send_puback, packet.packet_id)
            else:
                self._send(PubAck(packet.packet_id))

    def _send_puback(self, packet_id: int) -> None:
        if self._phase is _Phase.CONNECTED:
            self._send(PubAck(packet_id))

    def _on_subscribe(self, packet: Subscribe) -> None:
        assert self._device_session is not None
        codes: list[int] = []
        for topic_filter, requested in packet.topics:
            try:
                granted = self._device_session.on_subscribe(topic_filter, min(requested, 1))
            except ProtocolViolation as exc:
                self.close(f"protocol violation: {exc}")
                return
            except Exception:
                log.exception("%s: on_subscribe raised", self)
                self.close("service error in on_subscribe")
                return
            if granted not in (0, 1, _SUBACK_FAILURE):
                log.error("%s: on_subscribe granted %r; refusing", self, granted)
                granted = _SUBACK_FAILURE
            if granted != _SUBACK_FAILURE:
                granted = min(granted, requested)
                self._session.subscriptions[topic_filter] = granted
            codes.append(granted)
        if self._phase is _Phase.CONNECTED:
            self._send(SubAck(packet.packet_id, tuple(codes)))

    def _send(self, packet: Packet) -> None:
        data = encode(packet)
        self._write(self._ws.send(data) if self._ws is not None else data)

    def _write(self, data: bytes) -> None:
        if not data or self._transport is None or self._transport.is_closing():
            return
        self._transport.write(data)
        buffered = self._transport.get_write_buffer_size()
        if buffered > self._server.max_write_buffer and self._phase is not _Phase.CLOSED:
            self.close(f"slow consumer: {buffered} bytes unsent")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _connect_timeout(self) -> None:
        if self._phase is _Phase.AWAIT_CONNECT:
            self.close(f"no CONNECT within {self._server.connect_timeout_s} s")

    def _keep_alive_check(self) -> None:
        limit = self.keep_alive_s * 1.5
        idle = self._loop.time() - self._last_packet_at
        if idle >= limit:
            self.close(f"keep-alive expired ({limit:g} s without a packet)")
        else:
            self._timer = self._loop.call_later(limit - idle, self._keep_alive_check)


class _Acceptor(asyncio.Protocol):
    """The protocol of a freshly accepted TCP socket: pause it and start TLS."""

    def __init__(self, server: MQTTServer, transport_name: str) -> None:
        self._server = server
        self._transport_name = transport_name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Asyncio callback: a new TCP connection."""
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello must reach the TLS layer, not us
        self._server._accept(transport, self._transport_name)


class MQTTServer:
    """Serves one :class:`Endpoint` over MQTT/TLS, and optionally MQTT/WebSockets/TLS."""

    def __init__(
        self,
        endpoint: Endpoint,
        tls: Callable[[], ssl.SSLContext],
        *,
        max_packet_size: int = 256 * 1024 + 1024,
        name: str = "",
        connect_timeout_s: float = 30.0,
        handshake_timeout_s: float = 10.0,
        max_write_buffer: int = 8 * 1024 * 1024,
        ws_path: str = IOT_HUB_WEBSOCKET_PATH,
        puback_delay_s: float = 0.0,
    ) -> None:
        self.endpoint = endpoint
        #: Hold each PUBACK this long after the PUBLISH was handled (a simulated round
        #: trip; pipelined, so it bounds latency, not throughput). May be changed live.
        self.puback_delay_s = puback_delay_s
        self.tls = tls
        self.max_packet_size = max_packet_size
        self.name = name or "mqtt"
        self.connect_timeout_s = connect_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.max_write_buffer = max_write_buffer
        self.ws_path = ws_path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[asyncio.Server] = []
        self._address: tuple[str, int] | None = None
        self._ws_address: tuple[str, int] | None = None
        self._all: set[MQTTConnection] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._by_client_id: dict[str, MQTTConnection] = {}
        self._sessions: dict[str, _Session] = {}  # persistent (clean_session 0) ones

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (set by :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("MQTTServer is not started")
        return self._loop

    async def start(self, host: str, port: int, ws_port: int | None = None) -> None:
        """Listen on ``host:port`` (0 picks a free port), and WebSockets on ``ws_port``."""
        self._loop = asyncio.get_running_loop()
        listener = await self._loop.create_server(lambda: _Acceptor(self, "mqtts"), host, port)
        self._listeners.append(listener)
        self._address = listener.sockets[0].getsockname()[:2]
        if ws_port is not None:
            ws = await self._loop.create_server(lambda: _Acceptor(self, "wss"), host, ws_port)
            self._listeners.append(ws)
            self._ws_address = ws.sockets[0].getsockname()[:2]
        log.info("%s: listening on %s (WebSockets: %s)", self.name, self._address, self._ws_address)

    @property
    def address(self) -> tuple[str, int]:
        """The MQTT/TLS address actually bound."""
        if self._address is None:
            raise RuntimeError("MQTTServer is not started")
        return self._address

    @property
    def ws_address(self) -> tuple[str, int] | None:
        """The MQTT/WebSockets address, if any."""
        return self._ws_address

    def connections(self) -> list[MQTTConnection]:
        """The connected (CONNACK 0 sent, not yet closed) connections."""
        return list(self._by_client_id.values())

    def connection(self, client_id: str) -> MQTTConnection | None:
        """The live connection of ``client_id``, if any."""
        return self._by_client_id.get(client_id)

    def drop_session(self, client_id: str) -> None:
        """Forget a stored persistent session (as deleting a device does)."""
        self._sessions.pop(client_id, None)

    async def stop(self) -> None:
        """Stop listening, close every connection, and wait until all sockets are gone."""
        for listener in self._listeners:
            listener.close()
        for task in self._handshakes:
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        connections = list(self._all)
        for connection in connections:
            connection.close("server stopping")
        if connections:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(c.wait_closed()) for c in connections],
                timeout=_CLOSE_LINGER_S * 2,
            )
            for waiter in pending:
                waiter.cancel()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        log.info("%s: stopped", self.name)

    # --- called by connections ------------------------------------------------------------

    def _accept(self, raw: asyncio.Transport, transport_name: str) -> None:
        connection = MQTTConnection(self, transport_name, raw)
        self._all.add(connection)
        task = self.loop.create_task(self._handshake(raw, connection))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, raw: asyncio.Transport, connection: MQTTConnection) -> None:
        try:
            context = self.tls()
            transport = await self.loop.start_tls(
                raw,
                connection,
                context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout_s,
            )
        except asyncio.CancelledError:
            connection._abandon(raw, "server stopping during the TLS handshake")
            raise
        except Exception as exc:
            log.warning("%s: TLS handshake failed: %s", connection, exc)
            connection._abandon(raw, f"TLS handshake failed: {exc}")
            return
        if transport is None:  # pragma: no cover - start_tls returns None only on shutdown
            connection.close("TLS transport went away")
            return
        connection._attach(transport)

    def _take_over(self, connection: MQTTConnection) -> tuple[_Session, bool]:
        """Register ``connection`` under its client id; return its session and presence."""
        client_id = connection.client_id
        old = self._by_client_id.get(client_id)
        if old is not None and old is not connection:
            old.close(f"kicked: client id {client_id!r} connected again")
        self._by_client_id[client_id] = connection
        if connection.clean_session:
            self._sessions.pop(client_id, None)
            return _Session(), False
        stored = self._sessions.get(client_id)
        if stored is not None:
            return stored, True
        session = self._sessions[client_id] = _Session()
        return session, False

    def _forget(self, connection: MQTTConnection) -> None:
        if self._by_client_id.get(connection.client_id) is connection:
            del self._by_client_id[connection.client_id]

    def _discard(self, connection: MQTTConnection) -> None:
        self._all.discard(connection)
