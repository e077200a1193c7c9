"""Helpers and fixtures for tests that need devcloud.

Fixtures are defined as ``<name>_fixture`` with ``@pytest.fixture(name="<name>")``, so a
test module imports the function and uses the short name as a parameter without
shadowing anything::

    from tests.support.devcloud import devcloud_fixture, pki_fixture  # noqa: F401

    def test_x(devcloud: DevCloudHandle, pki: PKI) -> None: ...

Fixtures:

* ``pki`` — a session-wide :class:`devcloud.pki.PKI` in a temporary directory.
* ``devcloud`` — a running devcloud (:class:`DevCloudThread` handle) on random free
  ports and fresh 127.x.y.z addresses, with the default enrollment group, in-memory
  state, assignment delay 0.05 s. Stopped and checked for leaks at teardown.

Building blocks (usable without fixtures): :class:`RecordingConnection` (a fake server
connection that records what a service sends), :func:`connect_request`,
:func:`free_loopback_address`, :class:`MqttDevice` (a paho-mqtt device client with
TLS, used to drive devcloud over the wire as a real device would).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509

from devcloud.app import DevCloudConfig, DevCloudHandle, DevCloudThread, HubSpec
from devcloud.mqtt.endpoint import ConnectRequest
from devcloud.pki import PKI, Issued

T = TypeVar("T")

# -- in-memory fakes -----------------------------------------------------------------------


@dataclass
class RecordingConnection:
    """A stand-in for the server's :class:`~devcloud.mqtt.endpoint.Connection`.

    It records every publish (regardless of subscriptions — the server filters those)
    and the close reason.
    """

    client_id: str
    published: list[tuple[str, bytes, int]] = field(default_factory=list)
    closed: str | None = None

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.published.append((topic, payload, qos))

    def close(self, reason: str) -> None:
        self.closed = reason

    def topics(self) -> list[str]:
        """The topics published so far."""
        return [t for t, _, _ in self.published]

    def last_json(self) -> Any:
        """The last published payload, decoded as JSON."""
        return json.loads(self.published[-1][1])


def connect_request(
    client_id: str,
    username: str | None,
    chain: Sequence[x509.Certificate],
    *,
    clean_session: bool = True,
    local_address: tuple[str, int] = ("127.0.0.2", 8883),
) -> ConnectRequest:
    """A CONNECT as the server would hand it to a service."""
    return ConnectRequest(
        client_id=client_id,
        username=username,
        password=None,
        clean_session=clean_session,
        keep_alive_s=60,
        cert_chain=tuple(chain),
        local_address=local_address,
        transport="mqtts",
    )


def chain_of(issued: Issued, pki: PKI) -> list[x509.Certificate]:
    """The verified chain (leaf first, up to ``pki``'s root) of a certificate it issued."""
    certs = x509.load_pem_x509_certificates(issued.chain_path.read_bytes())
    return [*certs, pki.root]


# -- addresses -----------------------------------------------------------------------------

_address_counter = itertools.count((os.getpid() * 7) % 200 + 20)


def free_loopback_address() -> str:
    """A 127.x.y.z address unlikely to be used by another test process of this run."""
    n = next(_address_counter)
    return f"127.{100 + (os.getpid() % 100)}.{(n // 250) % 250}.{n % 250 + 2}"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(name="pki", scope="session")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A session-wide devcloud PKI."""
    return PKI.create(tmp_path_factory.mktemp("pki"))


def devcloud_config(state_dir: Path, **overrides: Any) -> DevCloudConfig:
    """A config on fresh 127.x.y.z addresses and free ports, fast assignment, memory state."""
    hubs = overrides.pop("hubs", None)
    if hubs is None:
        hubs = (
            HubSpec("hub1", free_loopback_address(), 0),
            HubSpec("hub2", free_loopback_address(), 0),
        )
    fields: dict[str, Any] = {
        "dps_host": free_loopback_address(),
        "dps_port": 0,
        "rest_port": 0,
        "assignment_delay_s": 0.05,
        "hubs": hubs,
    }
    fields.update(overrides)
    return DevCloudConfig(state_dir=state_dir, **fields)


@contextlib.contextmanager
def running_devcloud(
    state_dir: Path, *, pki: PKI | None = None, **overrides: Any
) -> Iterator[DevCloudHandle]:
    """Run a devcloud (see :func:`devcloud_config`) for the ``with`` block; check it stopped."""
    # Only this runner's thread is checked: a longer-lived devcloud (a session fixture of
    # another test package) may legitimately be running beside it.
    before = {t for t in threading.enumerate() if t.name == "devcloud"}
    runner = DevCloudThread(devcloud_config(state_dir, **overrides), pki=pki)
    with runner as cloud:
        yield cloud
    leftover = [t for t in threading.enumerate() if t.name == "devcloud" and t not in before]
    assert not leftover, f"devcloud threads left running: {leftover}"


@pytest.fixture(name="devcloud")
def devcloud_fixture(tmp_path: Path) -> Iterator[DevCloudHandle]:
    """A running devcloud with the default group, in-memory state, random addresses."""
    with running_devcloud(tmp_path / "devcloud") as cloud:
        yield cloud


# -- a paho-mqtt device --------------------------------------------------------------------


#: paho's MQTT 5 reason code for each MQTT 3.1.1 CONNACK return code.
_V5_TO_311 = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


class MqttDevice:
    """A device driven over real TLS with paho-mqtt, for tests.

    Messages arrive in :attr:`messages` (a queue of ``(topic, payload)``); use
    :meth:`expect` to wait for one matching a topic prefix with a deadline.

    Only the network thread touches the paho client once it runs: paho writes to the
    TLS socket from whichever thread calls ``publish``, and two threads using one
    ``SSLSocket`` at once now and then lose the connection. :meth:`subscribe`,
    :meth:`publish` and :meth:`close` hand their call to that thread.
    """

    def __init__(
        self,
        address: tuple[str, int],
        client_id: str,
        username: str,
        identity: Issued,
        ca_path: Path,
        *,
        clean_session: bool = True,
        websockets: bool = False,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.address = address
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
            transport="websockets" if websockets else "tcp",
        )
        if websockets:
            client.ws_set_options(path="/$iothub/websocket")
        client.username_pw_set(username)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
        context.load_cert_chain(str(identity.chain_path), str(identity.key_path))
        client.tls_set_context(context)

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            # paho 2 reports MQTT 3.1.1 return codes as MQTT 5 reason codes; map them back.
            self.connack.put(_V5_TO_311.get(int(reason.value), int(reason.value)))

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            self.messages.put((msg.topic, bytes(msg.payload)))

        def on_disconnect(_c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
            self.disconnected.set()

        def on_subscribe(_c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
            self.subacks.put([int(c.value) for c in codes])

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        self.client = client
        self.client_id = client_id
        #: Never set: waited on for DPS's retry-after, so the pause is interruptible.
        self.retry_wait = threading.Event()
        self._dps_subscribed = False
        self._rids = itertools.count(1, 100)
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()

    @classmethod
    def dps(
        cls,
        cloud: DevCloudHandle,
        identity: Issued,
        registration_id: str,
        *,
        websockets: bool = False,
        api_version: str = "2019-03-31",
    ) -> MqttDevice:
        """A device connecting to ``cloud``'s DPS as ``registration_id`` (MQTT or WSS)."""
        username = f"{cloud.id_scope}/registrations/{registration_id}/api-version={api_version}"
        address = cloud.dps_ws_address if websockets else cloud.dps_address
        assert address is not None, "this devcloud has no DPS WebSocket port"
        return cls(
            address, registration_id, username, identity, cloud.ca_path, websockets=websockets
        )

    @classmethod
    def hub(
        cls,
        cloud: DevCloudHandle,
        hub: str,
        identity: Issued,
        device_id: str,
        *,
        clean_session: bool = True,
        websockets: bool = False,
    ) -> MqttDevice:
        """A device connecting to hub ``hub`` (a name or hostname) of ``cloud``."""
        name = cloud.hub_name(hub)
        username = f"{cloud.hub_hostname(name)}/{device_id}/?api-version=2021-04-12"
        address = cloud.hub_ws_addresses[name] if websockets else cloud.hub_addresses[name]
        assert address is not None, f"hub {name} has no WebSocket port"
        return cls(
            address,
            device_id,
            username,
            identity,
            cloud.ca_path,
            clean_session=clean_session,
            websockets=websockets,
        )

    def register(
        self,
        payload: Any = None,
        *,
        timeout_s: float = 10.0,
        extra: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Run the DPS register/poll exchange; return the final status and JSON body.

        Polls honour ``retry-after`` as a real device does; bounded by ``timeout_s``.
        Call after :meth:`connect`; subscribes to the response topic itself (once).
        ``extra`` adds fields to the request body (``csr``).
        """
        if not self._dps_subscribed:
            assert self.subscribe("$dps/registrations/res/#") == 1
            self._dps_subscribed = True
        rid = itertools.count(next(self._rids))
        body = json.dumps({"registrationId": self.client_id, "payload": payload, **(extra or {})})
        self.publish(f"$dps/registrations/PUT/iotdps-register/?$rid={next(rid)}", body)
        deadline = time.monotonic() + timeout_s
        while True:
            topic, raw = self.expect(
                "$dps/registrations/res/", max(0.1, deadline - time.monotonic())
            )
            status = int(topic.split("/")[3])
            answer = json.loads(raw)
            if status != 202:
                return status, answer
            query = dict(p.split("=", 1) for p in topic.split("?", 1)[1].split("&"))
            wait_s = float(query.get("retry-after", "1"))
            if time.monotonic() + wait_s > deadline:
                raise AssertionError(f"still assigning after {timeout_s} s")
            self.retry_wait.wait(wait_s)  # the protocol's own pacing, not a guess
            op = answer["operationId"]
            self.publish(
                "$dps/registrations/GET/iotdps-get-operationstatus/"
                f"?$rid={next(rid)}&operationId={op}",
                b"",
            )

    def connect(self, timeout_s: float = 5.0) -> int:
        """Connect and return the CONNACK code (0 = accepted)."""
        self.client.connect(self.address[0], self.address[1], keepalive=30)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-device", daemon=True)
        self._thread.start()
        self._started = True
        try:
            return self.connack.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no CONNACK within {timeout_s} s") from None

    def _run(self) -> None:
        # Our own network loop (not paho's loop_start): it stops within 50 ms, and
        # paho's reconnect logic never runs. Calls handed over run between two loops.
        while not self._stop.is_set():
            while not self._calls.empty():
                call, result = self._calls.get_nowait()
                try:
                    result.set_result(call())
                except Exception as exc:
                    result.set_exception(exc)
            if self.client.loop(timeout=0.01) != 0:
                self._stop.wait(0.05)

    def _on_network_thread(self, call: Callable[[], T]) -> T:
        """Run ``call`` on the network thread (directly if none runs) and return its result."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return call()
        result: Future[T] = Future()
        self._calls.put((call, result))
        return result.result(timeout=5.0)

    def subscribe(self, topic_filter: str, qos: int = 1, timeout_s: float = 5.0) -> int:
        """Subscribe and return the SUBACK code."""
        self._on_network_thread(lambda: self.client.subscribe(topic_filter, qos))
        return self.subacks.get(timeout=timeout_s)[0]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, *, wait: bool = True) -> None:
        """Publish (and, if ``wait``, wait for PUBACK when ``qos`` is 1)."""
        info = self._on_network_thread(lambda: self.client.publish(topic, payload, qos))
        if qos and wait:
            info.wait_for_publish(timeout=5.0)

    def expect(self, prefix: str, timeout_s: float = 5.0) -> tuple[str, bytes]:
        """The next message whose topic starts with ``prefix`` (others are discarded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no message on {prefix!r} within {timeout_s} s")
            try:
                topic, payload = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if topic.startswith(prefix):
                return topic, payload

    def wait_disconnected(self, timeout_s: float = 5.0) -> bool:
        """Whether the server closed the connection within ``timeout_s``."""
        return self.disconnected.wait(timeout_s)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        if self._started:
            self._on_network_thread(self.client.disconnect)
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5)
            self._started = False


@pytest.fixture(name="mqtt_devices")
def mqtt_devices_fixture() -> Iterator[list[MqttDevice]]:
    """A list to append :class:`MqttDevice` objects to; all are closed at teardown."""
    devices: list[MqttDevice] = []
    yield devices
    for device in devices:
        device.close()
