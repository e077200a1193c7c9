"""devcloud's real MQTT/TLS server on loopback, in a thread, with a recording endpoint.

For transport tests: the endpoint answers CONNECT with a chosen CONNACK code, grants
subscriptions, records device publishes (in queues a test reads with a deadline), and
lets a test publish to or drop a device. The server thread itself is the one of
:mod:`tests.support.mqtt_server`.
"""

from __future__ import annotations

import queue
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from devcloud.mqtt.endpoint import (
    CONNACK_ACCEPTED,
    Connection,
    ConnectRequest,
    DeviceSession,
)
from devcloud.pki import PKI, Issued
from tests.support import mqtt_server


@dataclass
class RecordingSession:
    connection: Connection
    endpoint: RecordingEndpoint

    def on_subscribe(self, topic_filter: str, qos: int) -> int:
        self.endpoint.subscriptions.put((topic_filter, qos))
        return 0x80 if topic_filter in self.endpoint.refused_filters else min(qos, 1)

    def on_publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.endpoint.publishes.put((topic, payload, qos))

    def on_disconnect(self, reason: str) -> None:
        self.endpoint.disconnects.put(reason)


@dataclass
class RecordingEndpoint:
    connack_code: int = CONNACK_ACCEPTED
    refused_filters: set[str] = field(default_factory=set)
    requests: queue.Queue[ConnectRequest] = field(default_factory=queue.Queue)
    subscriptions: queue.Queue[tuple[str, int]] = field(default_factory=queue.Queue)
    publishes: queue.Queue[tuple[str, bytes, int]] = field(default_factory=queue.Queue)
    disconnects: queue.Queue[str] = field(default_factory=queue.Queue)

    def authenticate(
        self, request: ConnectRequest, connection: Connection
    ) -> tuple[int, DeviceSession | None]:
        self.requests.put(request)
        if self.connack_code != CONNACK_ACCEPTED:
            return self.connack_code, None
        return CONNACK_ACCEPTED, RecordingSession(connection, self)


def server_context(pki: PKI, server: Issued) -> Callable[[], ssl.SSLContext]:
    """A TLS 1.2+ server context that requires a client certificate from ``pki``."""

    def make() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(server.chain_path, server.key_path)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki.root_path))
        return context

    return make


class ServerThread(mqtt_server.ServerThread):
    """devcloud's server thread (:mod:`tests.support.mqtt_server`), started on ``host``,
    with the two server-side actions transport tests need: publish to a device, drop it."""

    def __init__(self, endpoint: RecordingEndpoint, tls: Callable[[], ssl.SSLContext]) -> None:
        super().__init__(endpoint, tls, name="test-mqtt", handshake_timeout_s=5.0)
        self.endpoint = endpoint

    def start(self, host: str = mqtt_server.LOOPBACK) -> ServerThread:
        self._host = host
        self.__enter__()
        return self

    def stop(self) -> None:
        self.__exit__(None, None, None)

    def publish_to(self, client_id: str, topic: str, payload: bytes, qos: int = 1) -> None:
        def send() -> None:
            connection = self.server.connection(client_id)
            assert connection is not None, f"{client_id} is not connected"
            connection.publish(topic, payload, qos)

        self.call(send)

    def drop(self, client_id: str, reason: str = "dropped by test") -> None:
        def close() -> None:
            connection = self.server.connection(client_id)
            assert connection is not None, f"{client_id} is not connected"
            connection.close(reason)

        self.call(close)
