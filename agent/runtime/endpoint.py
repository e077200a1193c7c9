"""What an MQTT connection is made of: where to, as whom, with which TLS; and its events.

:class:`MqttEndpoint` and :class:`TlsSettings` describe a connection;
:func:`build_ssl_context` turns the TLS settings into a verifying client context
(TLS 1.2+, ``CERT_REQUIRED`` with ``check_hostname``; an IP-address host is verified
against the certificate's IP SANs). The frozen event dataclasses (:data:`TransportEvent`)
are what :class:`~agent.runtime.transport.MqttTransport` hands out of ``poll()``.
Nothing here imports paho, so ``device-agent check`` and the executor can use these
types without loading it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from agent.core.proxy import ProxyRoute
from agent.errors import TransportError

__all__ = [
    "ConnectRefused",
    "Connected",
    "ConnectionLost",
    "MessageReceived",
    "MqttEndpoint",
    "PublishAcked",
    "Subscribed",
    "TlsSettings",
    "TransportEvent",
    "build_ssl_context",
]


@dataclass(frozen=True)
class TlsSettings:
    """The client identity and the CA that verifies the server (None: system store)."""

    cert_chain_path: Path
    key_path: Path
    key_passphrase: bytes | None
    ca_path: Path | None


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and as whom to connect."""

    host: str
    port: int
    client_id: str
    username: str
    websockets: bool = False
    ws_path: str = "/$iothub/websocket"
    keep_alive_s: int = 60
    clean_session: bool = False
    #: An HTTP proxy to tunnel through (``CONNECT host:port``), or None for direct.
    proxy: ProxyRoute | None = None

    def __str__(self) -> str:
        scheme = "wss" if self.websockets else "mqtts"
        via = f" via proxy {self.proxy}" if self.proxy is not None else ""
        return f"{scheme}://{self.host}:{self.port}{via}"


@dataclass(frozen=True)
class Connected:
    """CONNACK 0: the connection is up."""

    session_present: bool


@dataclass(frozen=True)
class ConnectRefused:
    """CONNACK with a non-zero MQTT 3.1.1 return code (3: unavailable, 4/5: rejected)."""

    return_code: int


@dataclass(frozen=True)
class ConnectionLost:
    """A network/TLS failure or timeout before CONNACK, or a drop after it."""

    reason: str


@dataclass(frozen=True)
class MessageReceived:
    """A PUBLISH from the server."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class PublishAcked:
    """The server acknowledged our QoS 1 PUBLISH ``mid`` (PUBACK)."""

    mid: int


@dataclass(frozen=True)
class Subscribed:
    """SUBACK for SUBSCRIBE ``mid``: granted QoS per filter (0x80 = refused)."""

    mid: int
    granted_qos: tuple[int, ...]


TransportEvent = (
    Connected | ConnectRefused | ConnectionLost | MessageReceived | PublishAcked | Subscribed
)


def build_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client context: TLS 1.2+, server certificate and hostname always verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.ca_path is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=str(tls.ca_path))
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"{tls.ca_path}: cannot load the server CA: {exc}") from exc
    try:
        context.load_cert_chain(
            str(tls.cert_chain_path), str(tls.key_path), password=tls.key_passphrase
        )
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(
            f"cannot load the client certificate {tls.cert_chain_path} "
            f"with key {tls.key_path}: {exc}"
        ) from exc
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise TransportError("refusing a TLS context without server verification")
    return context
