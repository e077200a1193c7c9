"""One IoT Hub endpoint: device connections, telemetry, C2D, twins and direct methods.

Theory of operation. :class:`HubEndpoint` implements the server's
:class:`~devcloud.mqtt.endpoint.Endpoint` for one hub. CONNECT is accepted when the
username is ``{anyHostname}/{clientId}/...``, the device exists in this hub and is
enabled, and the TLS leaf's CN is the device id and the leaf is not revoked (nor an
issued certificate a test marked refused); otherwise
CONNACK 5 (4 when the username cannot be parsed). A second connection for the same
device closes the first.

A :class:`HubSession` grants exactly four subscriptions — ``devices/{id}/messages/devicebound/#``,
``$iothub/twin/res/#``, ``$iothub/twin/PATCH/properties/desired/#``,
``$iothub/methods/POST/#`` — and refuses anything else with 0x80. It accepts PUBLISH on

* ``devices/{id}/messages/events/{property bag}``: stored in the shared
  :class:`~devcloud.telemetry.TelemetryLog` with its properties (``$.``-prefixed keys
  are system properties);
* ``$iothub/twin/GET/?$rid=R``: answered ``$iothub/twin/res/200/?$rid=R`` with the twin;
* ``$iothub/twin/PATCH/properties/reported/?$rid=R``: merged, answered
  ``res/204/?$rid=R&$version=N`` (400 when the body is not a JSON object);
* ``$iothub/methods/res/{status}/?$rid=R``: completes the service's pending invocation;
* ``$iothub/credentials/POST/issueCertificate/?$rid=R``: certificate renewal, answered by
  :class:`~devcloud.credentials.RenewalService` (needs ``$iothub/credentials/res/#``,
  the fifth filter a session grants).

Any other topic, another device's id, or a message over 256 KiB raises
:class:`~devcloud.mqtt.endpoint.ProtocolViolation`, and the server closes the connection,
as Azure does. Service-side operations (:meth:`HubEndpoint.invoke_method`,
:meth:`HubEndpoint.send_c2d`) and registry events (device disabled or deleted → close the
live connection; desired patch → push it) reach the device only through its own
:class:`~devcloud.mqtt.endpoint.Connection`. The ``model-id`` of a CONNECT username is
recorded on the device; connections and publishes are noted in
:class:`~devcloud.activity.DeviceActivity` (``lastActivityTime``). Subscriptions of
clean-session-0 clients are remembered across connections, as the server keeps them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devcloud.activity import DeviceActivity
from devcloud.credentials import CREDENTIALS_FILTER, ISSUE_PREFIX, RenewalService
from devcloud.enrollment_match import RevocationCheck, leaf_accepted, thumbprint
from devcloud.errors import (
    DeviceNotOnlineError,
    InvalidRequestError,
    MethodTimeoutError,
    NotFoundError,
)
from devcloud.issuance import Issuer
from devcloud.mqtt.codec import MalformedPacket, validate_topic_name
from devcloud.mqtt.endpoint import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_USERNAME_OR_PASSWORD,
    CONNACK_NOT_AUTHORIZED,
    Connection,
    ConnectRequest,
    DeviceSession,
    ProtocolViolation,
)
from devcloud.registry import DesiredPatched, DeviceChanged, Registry, RegistryEvent
from devcloud.telemetry import TelemetryLog

MAX_MESSAGE_BYTES = 256 * 1024
MAX_C2D_QUEUE = 50
TWIN_RES_FILTER = "$iothub/twin/res/#"
DESIRED_FILTER = "$iothub/twin/PATCH/properties/desired/#"
METHODS_FILTER = "$iothub/methods/POST/#"
TWIN_GET_PREFIX = "$iothub/twin/GET/"
REPORTED_PREFIX = "$iothub/twin/PATCH/properties/reported/"
METHOD_RES_PREFIX = "$iothub/methods/res/"


def c2d_filter(device_id: str) -> str:
    """The C2D subscription filter for ``device_id``."""
    return f"devices/{device_id}/messages/devicebound/#"


def parse_property_bag(bag: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(application, system)`` properties of a URL-encoded ``k=v&k2=v2`` bag."""
    app: dict[str, str] = {}
    system: dict[str, str] = {}
    for item in bag.split("&"):
        if not item:
            continue
        raw_key, _, raw_value = item.partition("=")
        key = urllib.parse.unquote(raw_key, errors="replace")
        value = urllib.parse.unquote(raw_value, errors="replace")
        if not key:
            continue
        (system if key.startswith("$.") else app)[key] = value
    return app, system


def encode_property_bag(properties: Mapping[str, str]) -> str:
    """The URL-encoded property bag of a topic."""
    return "&".join(
        f"{urllib.parse.quote(k, safe='$.')}={urllib.parse.quote(v, safe='')}"
        for k, v in properties.items()
    )


def model_id_of_username(username: str) -> str | None:
    """The ``model-id`` a device announces in its CONNECT username (IoT Plug and Play).

    ``{hostname}/{deviceId}/?api-version=2021-04-12&model-id=dtmi%3Aexample%3AThing%3B1``.
    """
    _, _, rest = username.partition("/")
    _, _, rest = rest.partition("/")
    query = rest.partition("?")[2] if "?" in rest else rest
    model_id = dict(urllib.parse.parse_qsl(query, keep_blank_values=True)).get("model-id")
    return model_id or None


def _rid(topic: str) -> str:
    _, _, query = topic.partition("?")
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True)).get("$rid", "")


@dataclass(frozen=True)
class MethodResponse:
    """A device's answer to a direct method."""

    status: int
    payload: Any


class HubEndpoint:
    """The :class:`~devcloud.mqtt.endpoint.Endpoint` of one IoT Hub."""

    def __init__(
        self,
        name: str,
        hostname: str,
        registry: Registry,
        telemetry: TelemetryLog,
        *,
        is_revoked: RevocationCheck | None = None,
        issuer: Issuer | None = None,
        renewal_delay_s: float = 0.05,
        activity: DeviceActivity | None = None,
    ) -> None:
        self.name = name
        self.hostname = hostname
        self.registry = registry
        self.telemetry = telemetry
        self.is_revoked = is_revoked
        self.activity = activity if activity is not None else DeviceActivity(registry.now)
        self.sessions: dict[str, HubSession] = {}
        self._kept_subscriptions: dict[str, set[str]] = {}
        self._c2d: dict[str, deque[tuple[str, bytes]]] = {}
        self._pending: dict[str, tuple[str, asyncio.Future[MethodResponse]]] = {}
        self._rids = itertools.count(1)
        self._message_ids = itertools.count(1)
        #: The certificate renewal endpoint (None: this hub issues no certificates).
        self.renewals = (
            RenewalService(
                name, registry, issuer, self._deliver_credentials, delay_s=renewal_delay_s
            )
            if issuer is not None
            else None
        )
        registry.add_listener(self._on_registry_event)

    # -- Endpoint ---------------------------------------------------------------------------

    def authenticate(
        self, request: ConnectRequest, connection: Connection
    ) -> tuple[int, DeviceSession | None]:
        """Accept a known, enabled device whose unrevoked certificate's CN is its device id."""
        parts = (request.username or "").split("/")
        if len(parts) < 3 or not parts[0]:
            return CONNACK_BAD_USERNAME_OR_PASSWORD, None
        device_id = request.client_id
        if parts[1] != device_id:
            return CONNACK_NOT_AUTHORIZED, None
        device = self.registry.device(self.name, device_id)
        if device is None or not device.enabled:
            return CONNACK_NOT_AUTHORIZED, None
        if not leaf_accepted(request.cert_chain, device_id, self.is_revoked):
            return CONNACK_NOT_AUTHORIZED, None
        if self.registry.certificate_refused(thumbprint(request.cert_chain[0])):
            return CONNACK_NOT_AUTHORIZED, None
        old = self.sessions.get(device_id)
        if old is not None:
            old.connection.close("another connection with the same device id")
        if request.clean_session:
            self._kept_subscriptions.pop(device_id, None)
        kept = self._kept_subscriptions.setdefault(device_id, set())
        session = HubSession(
            self, device_id, connection, kept if not request.clean_session else None
        )
        session.thumbprint = thumbprint(request.cert_chain[0])
        self.sessions[device_id] = session
        model_id = model_id_of_username(request.username or "")
        if model_id is not None:
            self.registry.set_model_id(self.name, device_id, model_id)
        self.activity.connection_changed(self.name, device_id)
        return CONNACK_ACCEPTED, session

    # -- service side -----------------------------------------------------------------------

    def is_connected(self, device_id: str) -> bool:
        """Whether ``device_id`` has a live connection to this hub."""
        return device_id in self.sessions

    async def invoke_method(
        self, device_id: str, method_name: str, payload: Any, timeout_s: float
    ) -> MethodResponse:
        """Call a direct method and wait for the answer.

        Raises :class:`DeviceNotOnlineError` at once when the device is not connected and
        subscribed to methods, :class:`MethodTimeoutError` when it does not answer in time.
        """
        self.registry.get_device(self.name, device_id)
        rid = format(next(self._rids), "x")
        topic = f"$iothub/methods/POST/{method_name}/?$rid={rid}"
        if not method_name or "/" in method_name or "?" in method_name:
            raise InvalidRequestError(f"invalid method name {method_name!r}")
        try:
            validate_topic_name(topic)  # no wildcards, NUL or invalid UTF-8
        except MalformedPacket as exc:
            raise InvalidRequestError(
                f"invalid method name {method_name!r}: {exc.problem}"
            ) from exc
        session = self.sessions.get(device_id)
        if session is None or METHODS_FILTER not in session.subscriptions:
            raise DeviceNotOnlineError(f"device {device_id!r} is not online")
        future: asyncio.Future[MethodResponse] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (device_id, future)
        try:
            session.connection.publish(topic, json.dumps(payload).encode(), 0)
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise MethodTimeoutError(
                f"device {device_id!r} did not answer {method_name!r} within {timeout_s} s"
            ) from None
        finally:
            self._pending.pop(rid, None)

    def send_c2d(
        self, device_id: str, body: bytes, properties: Mapping[str, str] | None = None
    ) -> str:
        """Queue a cloud-to-device message; delivered now if the device listens. Returns $.mid."""
        self.registry.get_device(self.name, device_id)
        props = dict(properties or {})
        message_id = props.setdefault("$.mid", f"c2d-{next(self._message_ids)}")
        props.setdefault("$.to", f"/devices/{device_id}/messages/deviceBound")
        topic = f"devices/{device_id}/messages/devicebound/{encode_property_bag(props)}"
        queue = self._c2d.setdefault(device_id, deque(maxlen=MAX_C2D_QUEUE))
        queue.append((topic, body))
        self._flush_c2d(device_id)
        return message_id

    def _flush_c2d(self, device_id: str) -> None:
        session = self.sessions.get(device_id)
        queue = self._c2d.get(device_id)
        if session is None or not queue or c2d_filter(device_id) not in session.subscriptions:
            return
        while queue:
            topic, body = queue.popleft()
            session.connection.publish(topic, body, 1)

    def _deliver_credentials(self, device_id: str, topic: str, payload: bytes) -> None:
        session = self.sessions.get(device_id)
        if session is not None and CREDENTIALS_FILTER in session.subscriptions:
            session.connection.publish(topic, payload, 0)

    def _on_registry_event(self, event: RegistryEvent) -> None:
        if event.hub != self.name:
            return
        session = self.sessions.get(event.device_id)
        if isinstance(event, DeviceChanged):
            if event.device is None:
                self._kept_subscriptions.pop(event.device_id, None)
                self._c2d.pop(event.device_id, None)
                if self.renewals is not None:
                    self.renewals.forget(event.device_id)
                self.activity.forget(self.name, event.device_id)
            if session is not None and (event.device is None or not event.device.enabled):
                reason = "device deleted" if event.device is None else "device disabled"
                self._drop(session)
                session.connection.close(reason)
        elif (
            isinstance(event, DesiredPatched)
            and session is not None
            and DESIRED_FILTER in session.subscriptions
        ):
            session.connection.publish(
                f"$iothub/twin/PATCH/properties/desired/?$version={event.version}",
                json.dumps(dict(event.patch)).encode(),
                0,
            )

    def _drop(self, session: HubSession) -> None:
        if self.sessions.get(session.device_id) is session:
            del self.sessions[session.device_id]
            if self.registry.device(self.name, session.device_id) is not None:
                self.activity.connection_changed(self.name, session.device_id)
        for rid, (device_id, future) in list(self._pending.items()):
            if device_id == session.device_id and not future.done():
                future.set_exception(DeviceNotOnlineError(f"device {device_id!r} disconnected"))
                del self._pending[rid]

    def _method_answer(self, device_id: str, rid: str, status: int, payload: bytes) -> None:
        pending = self._pending.get(rid)
        if pending is None or pending[0] != device_id or pending[1].done():
            return
        try:
            value: Any = json.loads(payload) if payload else None
        except (ValueError, UnicodeDecodeError):
            value = payload.decode(errors="replace")
        pending[1].set_result(MethodResponse(status, value))


class HubSession:
    """One device's live connection to a hub."""

    def __init__(
        self,
        hub: HubEndpoint,
        device_id: str,
        connection: Connection,
        kept: set[str] | None,
    ) -> None:
        self.hub = hub
        self.device_id = device_id
        self.connection = connection
        #: SHA-256 thumbprint of the certificate the device connected with.
        self.thumbprint = ""
        #: The granted filters; shared with the hub's memory for clean-session-0 clients.
        self.subscriptions: set[str] = kept if kept is not None else set()
        self.allowed = {c2d_filter(device_id), TWIN_RES_FILTER, DESIRED_FILTER, METHODS_FILTER}
        if hub.renewals is not None:
            self.allowed.add(CREDENTIALS_FILTER)

    def on_subscribe(self, topic_filter: str, qos: int) -> int:
        """Grant the IoT Hub filters (credentials too if the hub issues), refuse others (0x80)."""
        if topic_filter not in self.allowed:
            return 0x80
        self.subscriptions.add(topic_filter)
        if topic_filter == c2d_filter(self.device_id) and self.hub._c2d.get(self.device_id):
            # Deliver queued C2D once the server has recorded the subscription.
            asyncio.get_running_loop().call_soon(self.hub._flush_c2d, self.device_id)
        return min(qos, 1)

    def on_publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Route a device PUBLISH; :class:`ProtocolViolation` closes the connection."""
        if len(payload) > MAX_MESSAGE_BYTES:
            raise ProtocolViolation(f"message of {len(payload)} bytes exceeds 256 KiB")
        self.hub.activity.active(self.hub.name, self.device_id)
        if topic.startswith("devices/"):
            device_id, _, rest = topic[len("devices/") :].partition("/")
            if device_id != self.device_id:
                raise ProtocolViolation(f"topic names another device: {topic!r}")
            if rest != "messages/events" and not rest.startswith("messages/events/"):
                raise ProtocolViolation(f"devices may not publish on {topic!r}")
            self._telemetry(rest[len("messages/events/") :].rstrip("/"), payload)
        elif topic.startswith(TWIN_GET_PREFIX):
            try:
                twin = self.hub.registry.get_twin(self.hub.name, self.device_id)
            except NotFoundError:
                raise ProtocolViolation("the device no longer exists in this hub") from None
            self._twin_response(200, _rid(topic), json.dumps(twin.device_view()).encode())
        elif topic.startswith(REPORTED_PREFIX):
            self._reported(_rid(topic), payload)
        elif topic.startswith(METHOD_RES_PREFIX):
            status_text, _, _ = topic[len(METHOD_RES_PREFIX) :].partition("/")
            try:
                status = int(status_text)
            except ValueError:
                raise ProtocolViolation(f"method status is not a number: {topic!r}") from None
            self.hub._method_answer(self.device_id, _rid(topic), status, payload)
        elif topic.startswith(ISSUE_PREFIX) and self.hub.renewals is not None:
            self.hub.renewals.request(self.device_id, topic, payload)
        else:
            raise ProtocolViolation(f"devices may not publish on {topic!r}")

    def on_disconnect(self, reason: str) -> None:
        """Forget the live connection; pending method calls fail as 'not online'."""
        self.hub._drop(self)

    def _telemetry(self, bag: str, payload: bytes) -> None:
        app, system = parse_property_bag(bag)
        self.hub.telemetry.append(
            hub=self.hub.name,
            device_id=self.device_id,
            enqueued_time=self.hub.registry.now(),
            body=payload,
            properties=app,
            system_properties=system,
        )

    def _reported(self, rid: str, payload: bytes) -> None:
        try:
            patch = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            patch = None
        if not isinstance(patch, dict):
            self._twin_response(400, rid, b'{"message": "reported patch must be a JSON object"}')
            return
        try:
            twin = self.hub.registry.patch_reported(self.hub.name, self.device_id, patch)
        except NotFoundError:
            raise ProtocolViolation("the device no longer exists in this hub") from None
        self._twin_response(204, rid, b"", version=twin.reported_version)

    def _twin_response(
        self, status: int, rid: str, body: bytes, version: int | None = None
    ) -> None:
        topic = f"$iothub/twin/res/{status}/?$rid={urllib.parse.quote(rid, safe='')}"
        if version is not None:
            topic += f"&$version={version}"
        self.connection.publish(topic, body, 0)
