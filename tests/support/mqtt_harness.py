"""devcloud's real MQTT/TLS server on loopback, in a thread, with a recording endpoint.

For transport tests: the endpoint answers CONNECT with a chosen CONNACK code, grants
subscriptions, records device publishes, and lets a test publish to or drop a device.
Everything a test waits for is awaited with a deadline, never slept for.
"""

from __future__ import annotations

import asyncio
import queue
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from devcloud.mqtt.endpoint import (
    CONNACK_ACCEPTED,
    Connection,
    ConnectRequest,
    DeviceSession,
)
from devcloud.mqtt.server import MQTTServer
from devcloud.pki import PKI, Issued

_T = TypeVar("_T")


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


class ServerThread:
    """An :class:`MQTTServer` on its own event loop in one background thread."""

    def __init__(self, endpoint: RecordingEndpoint, tls: Callable[[], ssl.SSLContext]) -> None:
        self.endpoint = endpoint
        self.server = MQTTServer(endpoint, tls, name="test-mqtt", handshake_timeout_s=5.0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-mqtt-server")

    def start(self, host: str = "127.0.0.1") -> ServerThread:
        self._thread.start()
        self.run(self.server.start(host, 0, ws_port=0))
        return self

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def call(self, function: Callable[[], _T], timeout_s: float = 10.0) -> _T:
        async def wrapper() -> _T:
            return function()

        return self.run(wrapper(), timeout_s)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    @property
    def ws_address(self) -> tuple[str, int]:
        address = self.server.ws_address
        assert address is not None
        return address

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

    def stop(self) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            self._loop.close()
