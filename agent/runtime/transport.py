"""MQTT 3.1.1 over TLS (or over WebSockets over TLS): the only module that imports paho.

Theory of operation
-------------------
:class:`MqttTransport` is one MQTT connection at a time, driven entirely by the
caller's main loop: it starts no thread and never retries by itself (paho's
``loop_start``/``loop_forever``/reconnect machinery is not used; the lifecycle owns the
only retry loop). Everything that happens comes out of :meth:`MqttTransport.poll` as
frozen event dataclasses; failures are events too, never exceptions.
:class:`~agent.errors.TransportError` is raised only for misuse (publishing while not
connected, a second :meth:`start_connect`, unusable TLS files).

A connection goes through these phases, each bounded by ``connect_timeout_s`` overall::

    IDLE -start_connect-> TCP -writable-> TLS -handshake-> MQTT -CONNACK 0-> CONNECTED
    TCP -writable, with a proxy-> PROXY -2xx to CONNECT-> TLS
    TCP, PROXY, TLS, MQTT -error, refusal or timeout-> IDLE (ConnectionLost)
    MQTT -CONNACK n-> IDLE (ConnectRefused)
    CONNECTED -drop, keep-alive timeout or silence-> IDLE (ConnectionLost)
    any -disconnect()-> IDLE (no event);  any -close()-> CLOSED

The TCP connect and the TLS handshake are non-blocking and advance inside :meth:`poll`
(only resolving a host *name* blocks, in ``getaddrinfo``). The established TLS socket
is then handed to a fresh paho client, which sends CONNECT and from there on does the
MQTT framing, QoS 1 acknowledgements and keep-alive through its external-loop API
(``loop_read``/``loop_write``/``loop_misc``), driven by :meth:`poll`'s ``select``. A
wait lasts until the caller's deadline, the connect timeout, or the moment paho's
keep-alive has something to do (a PINGREQ when nothing was sent or received for
``keep_alive_s``, or closing when its answer is overdue), computed from paho's own
timestamps: an idle connection wakes the process about once per keep-alive. For
WebSockets, paho's HTTP upgrade is one blocking round trip on the already-established
TLS connection, bounded by the time left.

A connection that goes silent without a FIN or RST (a half-open path) is noticed by
:data:`SILENCE_FACTOR`: paho pings after ``keep_alive_s`` without traffic, so a live
server is never silent much longer than that; once nothing at all has come in for
``SILENCE_FACTOR * keep_alive_s`` the connection is given up (paho alone would wait for
the PINGRESP another ``keep_alive_s``, twice the keep-alive in all).

MQTT needs a PINGREQ only when the client sent nothing for a keep-alive period
[MQTT-3.1.2-23]; a PUBLISH proves the link as well. paho 2.2 never notes that a packet
went out, except a PINGREQ (its ``_packet_write`` returns before stamping
``_last_msg_out`` once the queue is empty: eclipse-paho/paho.mqtt.python#813), so it
pings every keep-alive however busy the connection is. :func:`_note_sent` stamps that
time after each packet this transport has written out in full, so a device that
publishes more often than its keep-alive sends no PINGREQ while the server answers
(paho still pings when nothing *came in* for a keep-alive, which is what notices a
dead path).

Each :meth:`start_connect` makes a new paho client, so nothing of a lost connection
(in-flight QoS 1 messages, packet ids) leaks into the next one: a message that got no
:class:`PublishAcked` before :class:`ConnectionLost` is the caller's to send again.

With an HTTP proxy (``endpoint.proxy``) the TCP connection goes to the proxy, which is
asked to ``CONNECT`` to the endpoint (:mod:`agent.core.proxy` makes the request and reads
the answer, non-blocking like the rest); TLS, and WebSockets if asked for, then run
through the tunnel. A refusal (403, 407, 5xx) is a :class:`ConnectionLost` whose reason
says so, and the lifecycle backs off as for any network failure.

Server verification is always on: ``CERT_REQUIRED`` with ``check_hostname``, TLS 1.2 or
later; an IP-address host is verified against the certificate's IP SANs.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import math
import select
import socket
import ssl
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.core import proxy as proxy_wire
from agent.core.proxy import ConnectAnswerParser, ProxyAnswerError
from agent.errors import TransportError
from agent.runtime.endpoint import (
    Connected,
    ConnectionLost,
    ConnectRefused,
    MessageReceived,
    MqttEndpoint,
    PublishAcked,
    Subscribed,
    TlsSettings,
    TransportEvent,
    build_ssl_context,
)

if TYPE_CHECKING:
    from paho.mqtt.client import Client

__all__ = [
    "ConnectRefused",
    "Connected",
    "ConnectionLost",
    "MessageReceived",
    "MqttEndpoint",
    "MqttTransport",
    "PublishAcked",
    "Subscribed",
    "TlsSettings",
    "TransportEvent",
    "build_ssl_context",
]

log = logging.getLogger(__name__)

#: paho reports MQTT 3.1.1 CONNACK codes as MQTT 5 reason codes; this maps them back.
_CONNACK_FROM_REASON = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}
#: A connected server silent for this many keep-alive periods is gone (see above): paho's
#: PINGREQ goes out after one period, so its PINGRESP has a quarter period to arrive.
SILENCE_FACTOR = 1.25
#: Wait between keep-alive checks if this paho lacks the timestamps read below.
_KEEPALIVE_FALLBACK_FRACTION = 0.5
#: Wake this much after paho's keep-alive moment, so that its own clock has passed it.
_KEEPALIVE_LATE_S = 0.001
#: Bound on the number of select rounds in one :meth:`MqttTransport.poll`.
_MAX_ROUNDS = 100_000


class _DeferredModule(types.ModuleType):
    """Stands in for a module in ``sys.modules`` until one of its attributes is asked for."""

    def __getattr__(self, attr: str) -> Any:
        import importlib
        import sys

        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, real)
        return getattr(real, attr)


def _defer_urllib_request() -> None:
    """Make paho's ``import urllib.request`` cost nothing (before paho is first imported).

    paho needs ``urllib.request`` only to look up proxies for PySocks, which the agent
    never uses (it connects the socket itself). Importing it pulls in ``http.client``
    and ``email`` (about 1 MiB of RSS). A :class:`_DeferredModule` takes its place
    until something reads an attribute of it; then the real module is imported and
    put everywhere the stand-in was, so a later user of ``urllib.request`` still works.
    """
    import sys

    if "urllib.request" in sys.modules or "paho.mqtt.client" in sys.modules:
        return
    import urllib

    stand_in = _DeferredModule("urllib.request")
    sys.modules["urllib.request"] = stand_in
    setattr(urllib, "request", stand_in)  # noqa: B010 - as the import system binds it


def preload() -> None:
    """Import paho now, as the first connection would: for a caller that is waiting anyway
    (the daemon, while the keystore check child of a cold boot runs; a connection, while
    the server answers its first TLS flight). Costs nothing once paho is loaded."""
    import sys

    if "paho.mqtt.client" in sys.modules:
        return
    _defer_urllib_request()
    import paho.mqtt.client  # noqa: F401


def _ascii(host: str) -> str | bytes:
    """``host`` as bytes when it is ASCII (every DNS name the agent is given, and every IP
    address): ``getaddrinfo`` and ``ssl`` then use it as it is, where a ``str`` goes
    through the ``idna`` codec, which loads ``unicodedata`` (about 0.8 MiB of RSS) to
    change nothing in an ASCII name."""
    return host.encode("ascii") if host.isascii() else host


def _keepalive_due_s(client: Client, keep_alive_s: float) -> float:
    """Seconds until paho's ``loop_misc`` has keep-alive work (>= 0; inf: never).

    paho pings when nothing was sent or nothing received for ``keep_alive_s`` (and
    closes when the PINGRESP is that late), measured with its module clock; read its
    timestamps (private, hence the fallback: a check at half the keep-alive).
    """
    if keep_alive_s <= 0:
        return math.inf
    import paho.mqtt.client as paho_client

    last_out = getattr(client, "_last_msg_out", None)
    last_in = getattr(client, "_last_bytes_received", None)
    if not isinstance(last_out, float) or not isinstance(last_in, float):
        return keep_alive_s * _KEEPALIVE_FALLBACK_FRACTION
    due = min(last_out, last_in) + keep_alive_s - paho_client.time_func()
    return max(0.0, due) + _KEEPALIVE_LATE_S


def _keepalive_work_now(client: Client, keep_alive_s: float) -> bool:
    """Whether paho's ``loop_misc`` may have something to do now (else it is skipped).

    It pings once nothing was sent or nothing received for ``keep_alive_s``, and closes
    when a PINGREQ's answer is that late; from its private timestamps (if this paho lacks
    them: always).
    """
    ping_t = getattr(client, "_ping_t", None)
    last_out = getattr(client, "_last_msg_out", None)
    last_in = getattr(client, "_last_bytes_received", None)
    if (
        keep_alive_s <= 0
        or not isinstance(ping_t, int | float)
        or not isinstance(last_out, float)
        or not isinstance(last_in, float)
    ):
        return True
    if ping_t:
        return True  # a PINGREQ awaits its PINGRESP
    import paho.mqtt.client as paho_client

    return paho_client.time_func() - min(last_out, last_in) >= keep_alive_s


def _note_sent(client: Client) -> None:
    """Tell paho's keep-alive that a packet went out now, if paho has written it all.

    paho 2.2 forgets to (see the module docstring); its ``_last_msg_out`` is private,
    read by :func:`_keepalive_due_s` and written here only if it exists as paho has it.
    """
    if client.want_write() or not isinstance(getattr(client, "_last_msg_out", None), float):
        return
    import paho.mqtt.client as paho_client

    setattr(client, "_last_msg_out", paho_client.time_func())  # noqa: B010 - private


class _Phase(enum.Enum):
    IDLE = "idle"
    TCP = "tcp-connecting"
    PROXY = "proxy-connect"
    TLS = "tls-handshake"
    MQTT = "awaiting-connack"
    CONNECTED = "connected"
    CLOSED = "closed"


class MqttTransport:
    """One MQTT connection at a time, single-threaded, driven by :meth:`poll`."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        tls: TlsSettings,
        *,
        connect_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if connect_timeout_s <= 0:
            raise TransportError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        self.endpoint = endpoint
        self._context = build_ssl_context(tls)
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._phase = _Phase.IDLE
        self._events: list[TransportEvent] = []
        self._sock: socket.socket | None = None  # raw/TLS socket until paho owns it
        self._client: Client | None = None
        self._deadline = 0.0
        #: When the last bytes from the server arrived (CONNECTED only; our clock).
        self._last_inbound = 0.0
        self._refused = False
        self._closing = False
        self._tls_wants_write = False
        self._proxy_request = b""  # CONNECT bytes not yet sent
        self._proxy_answer: ConnectAnswerParser | None = None
        self._woken = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # --- public API ----------------------------------------------------------------------

    @property
    def phase(self) -> str:
        """The connection phase, for status and logs (``idle``, ``connected``, ...)."""
        return self._phase.value

    @property
    def connected(self) -> bool:
        """True between :class:`Connected` and the next drop or :meth:`disconnect`."""
        return self._phase is _Phase.CONNECTED

    def start_connect(self) -> None:
        """Begin connecting; the outcome arrives from :meth:`poll` as an event."""
        if self._phase is _Phase.CLOSED:
            raise TransportError("the transport is closed")
        if self._phase is not _Phase.IDLE:
            raise TransportError(f"already {self._phase.value}; disconnect() first")
        self._refused = False
        self._closing = False
        self._tls_wants_write = False
        self._deadline = self._clock() + self._connect_timeout_s
        proxy = self.endpoint.proxy
        host, port = (proxy.host, proxy.port) if proxy else (self.endpoint.host, self.endpoint.port)
        try:
            infos = socket.getaddrinfo(_ascii(host), port, type=socket.SOCK_STREAM)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, IndexError) as exc:
            self._lost(f"cannot resolve {host}:{port}: {exc}")
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # MQTT packets are small: no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            self._lost(f"TCP connect to {host}:{port} failed: {errno.errorcode.get(code, code)}")
            return
        self._sock = sock
        self._phase = _Phase.TCP
        log.debug("connecting to %s", self.endpoint)

    def poll(self, timeout_s: float | None) -> list[TransportEvent]:
        """Advance the connection for up to ``timeout_s`` (None: no limit); return events.

        Returns as soon as there is at least one event, or when :meth:`wake` is called.
        With no connection it just waits.
        """
        if self._phase is _Phase.CLOSED:
            raise TransportError("the transport is closed")
        deadline = math.inf if timeout_s is None else self._clock() + max(0.0, timeout_s)
        self._woken = False
        for _ in range(_MAX_ROUNDS):
            if self._events:
                break
            remaining = deadline - self._clock()
            self._step(max(0.0, remaining))
            if self._events or self._woken or self._clock() >= deadline:
                break
        events, self._events = self._events, []
        return events

    def fileno(self) -> int | None:
        """The socket to wait on in a ``select()``-based main loop, if there is one."""
        sock = self._current_socket()
        return None if sock is None else sock.fileno()

    def wake(self) -> None:
        """Make a running :meth:`poll` return early (safe to call from another thread)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Send SUBSCRIBE; return its mid (a :class:`Subscribed` event follows).

        Raises :class:`TransportError` when not connected, including a connection that
        broke while sending (its :class:`ConnectionLost` then comes from :meth:`poll`).
        """
        client = self._connected_client("subscribe")
        try:
            rc, mid = client.subscribe(topic_filter, qos)
        except ValueError as exc:
            raise TransportError(f"cannot subscribe to {topic_filter!r}: {exc}") from exc
        if rc != 0 or mid is None:
            raise TransportError(f"SUBSCRIBE {topic_filter!r} not sent (paho rc {rc})")
        _note_sent(client)
        return int(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Send PUBLISH; return its mid (for QoS 1 a :class:`PublishAcked` follows the PUBACK).

        Raises :class:`TransportError` when not connected, including a connection that
        broke while sending (its :class:`ConnectionLost` then comes from :meth:`poll`).
        """
        client = self._connected_client("publish")
        try:
            info = client.publish(topic, payload, qos)
        except ValueError as exc:
            raise TransportError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc != 0:
            raise TransportError(f"PUBLISH to {topic!r} not sent (paho rc {info.rc})")
        _note_sent(client)
        return int(info.mid)

    def disconnect(self) -> None:
        """Send DISCONNECT if connected and close the socket; no event follows."""
        self._closing = True
        client = self._client
        if client is not None and self._phase is _Phase.CONNECTED:
            try:
                client.disconnect()
                self._flush_writes(client)
            except Exception:  # a failing goodbye is still a goodbye
                log.debug("DISCONNECT to %s failed", self.endpoint, exc_info=True)
        self._teardown()

    def close(self) -> None:
        """Disconnect and release everything; the transport cannot be used again."""
        if self._phase is _Phase.CLOSED:
            return
        self.disconnect()
        self._phase = _Phase.CLOSED
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> MqttTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the phases ------------------------------------------------------------------------

    def _step(self, remaining: float) -> None:
        phase = self._phase
        if phase in (_Phase.TCP, _Phase.TLS):
            self._step_handshake(remaining)
        elif phase is _Phase.PROXY:
            self._step_proxy(remaining)
        elif phase in (_Phase.MQTT, _Phase.CONNECTED):
            self._step_mqtt(remaining)
        else:
            self._wait([], [], remaining)

    def _wait(
        self, readers: list[Any], writers: list[Any], timeout: float
    ) -> tuple[list[Any], list[Any]]:
        try:
            readable, writable, _ = select.select(
                [*readers, self._wake_r], writers, [], None if math.isinf(timeout) else timeout
            )
        except (OSError, ValueError) as exc:  # a socket closed under us
            log.debug("select failed: %s", exc)
            return [], []
        if self._wake_r in readable:
            self._woken = True
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        return readable, writable

    def _time_left(self, remaining: float) -> float | None:
        """Wait budget for a connecting phase, or None (and a ConnectionLost) if past due."""
        left = self._deadline - self._clock()
        if left <= 0:
            self._fail(f"no answer within {self._connect_timeout_s:g} s ({self._phase.value})")
            return None
        return min(left, remaining)

    def _step_handshake(self, remaining: float) -> None:
        sock = self._sock
        assert sock is not None
        wait = self._time_left(remaining)
        if wait is None:
            return
        if self._phase is _Phase.TCP:
            _, writable = self._wait([], [sock], wait)
            if sock not in writable:
                return
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                name = errno.errorcode.get(code, code)
                if self.endpoint.proxy is not None:
                    self._fail(f"TCP connect to proxy {self.endpoint.proxy} failed: {name}")
                else:
                    self._fail(f"TCP connect failed: {name} ({code})")
                return
            if self.endpoint.proxy is not None:
                self._start_proxy_connect()
            else:
                self._start_tls(sock)
            return
        tls_sock = self._sock
        assert isinstance(tls_sock, ssl.SSLSocket)
        want_write = self._tls_wants_write
        readable, writable = self._wait(
            [] if want_write else [tls_sock], [tls_sock] if want_write else [], wait
        )
        if tls_sock in readable or tls_sock in writable:
            self._advance_tls()

    def _start_tls(self, sock: socket.socket) -> None:
        try:
            self._sock = self._context.wrap_socket(
                sock, server_hostname=_ascii(self.endpoint.host), do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            self._fail(f"TLS set-up failed: {exc}")
            return
        self._phase = _Phase.TLS
        self._advance_tls()

    def _start_proxy_connect(self) -> None:
        proxy = self.endpoint.proxy
        assert proxy is not None
        self._proxy_request = proxy_wire.connect_request(
            self.endpoint.host, self.endpoint.port, proxy.credentials
        )
        self._proxy_answer = ConnectAnswerParser()
        self._phase = _Phase.PROXY
        log.debug("asking proxy %s to CONNECT to %s", proxy, self.endpoint)

    def _step_proxy(self, remaining: float) -> None:
        sock, parser, proxy = self._sock, self._proxy_answer, self.endpoint.proxy
        assert sock is not None and parser is not None and proxy is not None
        wait = self._time_left(remaining)
        if wait is None:
            return
        sending = bool(self._proxy_request)
        readable, writable = self._wait([sock], [sock] if sending else [], wait)
        try:
            if sock in writable and self._proxy_request:
                sent = sock.send(self._proxy_request)
                self._proxy_request = self._proxy_request[sent:]
            if sock not in readable:
                return
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"proxy {proxy}: connection failed: {exc}")
            return
        if not data:
            self._fail(f"proxy {proxy} closed the connection without answering CONNECT")
            return
        try:
            answer = parser.feed(data)
        except ProxyAnswerError as exc:
            self._fail(f"proxy {proxy}: {exc}")
            return
        if answer is None:
            return
        self._proxy_answer = None
        if not answer.tunnel_open:
            self._fail(proxy_wire.refusal(answer, proxy, self.endpoint.host, self.endpoint.port))
            return
        log.debug("proxy %s opened a tunnel to %s", proxy, self.endpoint)
        self._start_tls(sock)

    def _advance_tls(self) -> None:
        tls_sock = self._sock
        assert isinstance(tls_sock, ssl.SSLSocket)
        try:
            tls_sock.do_handshake()
        except ssl.SSLWantReadError:
            self._tls_wants_write = False
            # Waiting for the server (a round trip on a real network): the first
            # connection imports paho now rather than after the handshake.
            preload()
            return
        except ssl.SSLWantWriteError:
            self._tls_wants_write = True
            return
        except ssl.SSLCertVerificationError as exc:
            self._fail(f"TLS: server certificate rejected: {exc.verify_message or exc}")
            return
        except (ssl.SSLError, OSError) as exc:
            self._fail(f"TLS handshake failed: {exc}")
            return
        log.debug("TLS %s established with %s", tls_sock.version(), self.endpoint)
        self._hand_over_to_paho(tls_sock)

    def _hand_over_to_paho(self, tls_sock: ssl.SSLSocket) -> None:
        _defer_urllib_request()
        from paho.mqtt.client import WebsocketConnectionError

        endpoint = self.endpoint
        client = self._new_client()
        prepared: Any = tls_sock
        if endpoint.websockets:
            from paho.mqtt.client import _WebsocketWrapper

            left = max(0.001, self._deadline - self._clock())
            try:
                tls_sock.settimeout(left)
                prepared = _WebsocketWrapper(
                    socket=tls_sock,
                    host=endpoint.host,
                    port=endpoint.port,
                    is_ssl=True,
                    path=endpoint.ws_path,
                    extra_headers=None,
                )
            except (OSError, WebsocketConnectionError, ValueError, IndexError) as exc:
                self._fail(f"WebSocket upgrade at {endpoint.ws_path} failed: {exc}")
                return
        # paho creates its socket in _create_socket(); hand it the one we connected.
        setattr(client, "_create_socket", lambda: prepared)  # noqa: B010
        self._sock = None
        self._client = client
        self._phase = _Phase.MQTT
        try:
            client.connect(endpoint.host, endpoint.port, keepalive=endpoint.keep_alive_s)
        except (OSError, ValueError) as exc:
            self._client = None
            with contextlib.suppress(OSError):
                prepared.close()
            self._fail(f"sending CONNECT failed: {exc}")

    def _new_client(self) -> Client:
        from paho.mqtt.client import Client, MQTTv311
        from paho.mqtt.enums import CallbackAPIVersion

        if not hasattr(Client, "_create_socket"):
            raise TransportError("this paho-mqtt has no _create_socket hook; pin paho-mqtt 2.x")
        endpoint = self.endpoint
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=endpoint.client_id,
            clean_session=endpoint.clean_session,
            protocol=MQTTv311,
            transport="websockets" if endpoint.websockets else "tcp",
            reconnect_on_failure=False,
        )
        client.username_pw_set(endpoint.username, None)
        client.max_inflight_messages_set(0)  # no hidden queue: the caller bounds in-flight
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        if endpoint.websockets:
            client.ws_set_options(path=endpoint.ws_path)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _step_mqtt(self, remaining: float) -> None:
        client = self._client
        assert client is not None
        wait = min(remaining, _keepalive_due_s(client, self.endpoint.keep_alive_s))
        if self._phase is _Phase.MQTT:
            budget = self._time_left(wait)
            if budget is None:
                return
            wait = budget
        sock: Any = client.socket()
        if sock is None:
            self._fail("connection closed")
            return
        if self._phase is _Phase.CONNECTED:
            silent_for = self._clock() - self._last_inbound
            limit = SILENCE_FACTOR * self.endpoint.keep_alive_s
            if silent_for >= limit:
                self._fail(
                    f"nothing from the server for {silent_for:.1f} s "
                    f"(keep-alive {self.endpoint.keep_alive_s} s): connection presumed dead"
                )
                return
            wait = min(wait, limit - silent_for)
        pending = sock.pending() if hasattr(sock, "pending") else 0
        readable, _ = self._wait(
            [sock], [sock] if client.want_write() else [], 0.0 if pending else wait
        )
        try:
            if sock in readable or pending:
                self._last_inbound = self._clock()
                client.loop_read()
            if client.socket() is not None and client.want_write():
                client.loop_write()
                _note_sent(client)
            if client.socket() is not None and _keepalive_work_now(
                client, self.endpoint.keep_alive_s
            ):
                client.loop_misc()
        except Exception as exc:  # paho, ssl, websocket errors: all mean "gone"
            log.debug("connection to %s failed", self.endpoint, exc_info=True)
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if client.socket() is None and self._phase in (_Phase.MQTT, _Phase.CONNECTED):
            # paho closed the socket without telling us why (e.g. a refused CONNACK 1).
            self._fail("connection closed")

    def _flush_writes(self, client: Client) -> None:
        deadline = self._clock() + 1.0
        for _ in range(100):
            sock: Any = client.socket()
            if sock is None or not client.want_write() or self._clock() >= deadline:
                return
            _, writable = self._wait([], [sock], deadline - self._clock())
            if sock in writable:
                client.loop_write()

    # --- paho callbacks (all run inside poll/publish/subscribe, on the caller's thread) ---

    def _on_connect(
        self, client: Client, userdata: object, flags: Any, reason: Any, properties: Any
    ) -> None:
        code = _CONNACK_FROM_REASON.get(int(reason.value), int(reason.value))
        if code == 0:
            self._phase = _Phase.CONNECTED
            self._last_inbound = self._clock()
            self._events.append(Connected(session_present=bool(flags.session_present)))
            log.info("connected to %s", self.endpoint)
        else:
            self._refused = True
            self._events.append(ConnectRefused(return_code=code))
            log.info("%s refused the connection: CONNACK %d (%s)", self.endpoint, code, reason)

    def _on_disconnect(
        self, client: Client, userdata: object, flags: Any, reason: Any, properties: Any
    ) -> None:
        if client is not self._client:
            return
        was = self._phase
        self._client = None
        self._phase = _Phase.IDLE if self._phase is not _Phase.CLOSED else _Phase.CLOSED
        if self._closing or self._refused:
            return
        if was is _Phase.MQTT:
            # With TLS 1.3 a server that refuses our certificate closes right after the
            # handshake, which looks exactly like this.
            self._lost(
                f"connection closed before CONNACK ({reason}); "
                "did the server refuse the client certificate?"
            )
        else:
            self._lost(f"connection lost after connect ({reason})")

    def _on_message(self, client: Client, userdata: object, message: Any) -> None:
        self._events.append(MessageReceived(topic=message.topic, payload=bytes(message.payload)))

    def _on_publish(
        self, client: Client, userdata: object, mid: int, reason: Any, properties: Any
    ) -> None:
        self._events.append(PublishAcked(mid=mid))

    def _on_subscribe(
        self, client: Client, userdata: object, mid: int, reasons: Any, properties: Any
    ) -> None:
        self._events.append(Subscribed(mid=mid, granted_qos=tuple(int(r.value) for r in reasons)))

    # --- helpers ---------------------------------------------------------------------------

    def _connected_client(self, what: str) -> Client:
        if self._phase is not _Phase.CONNECTED or self._client is None:
            raise TransportError(f"cannot {what}: not connected ({self._phase.value})")
        return self._client

    def _current_socket(self) -> Any:
        if self._sock is not None:
            return self._sock
        if self._client is not None:
            return self._client.socket()
        return None

    def _lost(self, reason: str) -> None:
        log.info("%s: %s", self.endpoint, reason)
        self._events.append(ConnectionLost(reason=reason))

    def _fail(self, reason: str) -> None:
        """A failure we detected ourselves: tear down and report it once."""
        self._closing = True  # paho's own on_disconnect must not report it twice
        self._teardown()
        self._closing = False
        self._lost(reason)

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            sock: Any = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._phase is not _Phase.CLOSED:
            self._phase = _Phase.IDLE
