"""The contract between devcloud's MQTT server and the services behind it.

The server (:mod:`devcloud.mqtt.server`) owns sockets, TLS, the codec, keep-alive,
packet ids, QoS 1 acknowledgements and persistent sessions (subscriptions kept for
clean-session-0 clients). It knows nothing of DPS or IoT Hub.

A service (the DPS endpoint, each IoT Hub endpoint) implements :class:`Endpoint`.
For each CONNECT the server calls :meth:`Endpoint.authenticate` with the verified
client certificate chain; a service that accepts returns a :class:`DeviceSession`
and the server then routes that connection's SUBSCRIBE and PUBLISH to it. The
service talks back to the device only through the :class:`Connection` it was given,
so a response can only ever reach the connection that asked.

Ordering guarantees of :class:`devcloud.mqtt.server.MQTTServer` (all callbacks run on
its event loop, one packet at a time per connection):

- ``authenticate`` runs once per CONNECT that names protocol ("MQTT", 4) and a
  non-empty client id; the server answers CONNACK 1 / 2 itself otherwise.
- When a client id connects again, the old connection is closed *after* the new
  one's ``authenticate`` accepted and before its CONNACK: the old session's
  ``on_disconnect`` then runs after the new session exists, so a service that keeps
  sessions by id must check identity (``if self.sessions.get(id) is session``).
- ``on_disconnect`` runs exactly once per accepted session, synchronously inside
  :meth:`Connection.close` or when the socket goes away.
- A subscription is recorded when ``on_subscribe`` returns, so a ``publish`` made
  inside ``on_subscribe`` for that filter is dropped; schedule it with
  ``loop.call_soon`` (it then follows the SUBACK).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from devcloud.errors import DevCloudError

# CONNACK return codes of MQTT 3.1.1.
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5


@dataclass(frozen=True)
class ConnectRequest:
    """What the device said in CONNECT, plus what TLS proved about it."""

    client_id: str
    username: str | None
    password: bytes | None
    clean_session: bool
    keep_alive_s: int
    #: Verified chain, leaf first, as the TLS handshake built it (empty if none).
    cert_chain: Sequence[x509.Certificate]
    #: The server's own address (host, port) the device connected to.
    local_address: tuple[str, int]
    #: ``"mqtts"`` or ``"wss"``.
    transport: str


class Connection(Protocol):
    """The server-side handle on one live device connection."""

    @property
    def client_id(self) -> str:
        """The client id the device sent in CONNECT."""
        ...

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Send a PUBLISH to this connection only, if it is subscribed to ``topic``.

        Delivered at the lower of ``qos`` and the granted QoS; silently dropped (and
        logged) when no subscription matches or the connection is closed. QoS 1
        messages stay in the MQTT session until PUBACK and are sent again (DUP) when
        a clean-session-0 client reconnects. Raises ``MalformedPacket`` (a
        ``ValueError``) for a topic with wildcards or a QoS other than 0 or 1. Safe to
        call from any thread.
        """
        ...

    def close(self, reason: str) -> None:
        """Drop the connection from the server side (as the hub does for a disabled device).

        The session's ``on_disconnect(reason)`` runs before this returns (when called
        on the server's loop). Safe to call from any thread; idempotent.
        """
        ...


class ProtocolViolation(DevCloudError, ValueError):
    """Raised by a :class:`DeviceSession` for a packet the service forbids.

    The server answers by closing the connection (MQTT 3.1.1 has no other answer).
    """


class DeviceSession(Protocol):
    """A service's view of one accepted connection."""

    def on_subscribe(self, topic_filter: str, qos: int) -> int:
        """Return the granted QoS (0 or 1) or 0x80 to refuse this filter.

        ``qos`` is the requested QoS capped at 1 (IoT Hub grants at most 1). A grant
        above the request is lowered to it; anything but 0, 1, 0x80 is a refusal.
        """
        ...

    def on_publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Handle a device PUBLISH. Raise :class:`ProtocolViolation` to disconnect it."""
        ...

    def on_disconnect(self, reason: str) -> None:
        """The connection is gone (DISCONNECT, socket closed, keep-alive expired, kicked)."""
        ...


class Endpoint(Protocol):
    """A service reachable at one address: DPS, or one IoT Hub."""

    def authenticate(
        self, request: ConnectRequest, connection: Connection
    ) -> tuple[int, DeviceSession | None]:
        """Return ``(CONNACK_ACCEPTED, session)`` or ``(code, None)`` to refuse."""
        ...
