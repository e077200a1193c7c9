"""devcloud's service REST API: asyncio, stdlib only, JSON in and out, loopback only.

Shaped after the Azure DPS and IoT Hub service APIs. Devices live in several hubs: routes
about one device take ``?hub=NAME`` (a hub name or hostname); without it the device is
looked up in every hub (409 if several hold it). Every error is
``{"errorCode", "message", "trackingId"}`` with the matching HTTP status (400 bad request,
401, 404 unknown, 405 wrong method, 409 conflict, 429, 500 devcloud bug, 504 method
timeout). Each response closes the connection.

Routes::

    GET    /health                                  {"status": "ok"}
    GET    /hubs                                    [{"name", "hostname", "host", "port",
                                                      "wsPort", "connectedDevices"}]
    GET    /dps                                     {"idScope", "host", "port", "wsPort"}
    GET    /dps/stats                               {"registrations": {regid: {"attempts",
                                                      "assignments"}}}
    GET    /enrollmentGroups                        [group, ...]
    GET    /enrollmentGroups/{id}                   group
    PUT    /enrollmentGroups/{id}                   Azure enrollment group JSON -> group
           (attestation.x509.signingCertificates.primary.certificate = PEM, or
            attestation.x509.caReferences.primary = "devcloud-root" | "devcloud-intermediate")
    PATCH  /enrollmentGroups/{id}                   any of allocationPolicy, iotHubs,
                                                    customAllocationDefinition.webhookUrl,
                                                    reprovisionPolicy, initialTwin,
                                                    provisioningStatus -> group
    DELETE /enrollmentGroups/{id}                   204
    GET    /enrollments                             [enrollment, ...]
    GET    /enrollments/{regid}                     enrollment
    PUT    /enrollments/{regid}                     Azure individual enrollment JSON
    PATCH  /enrollments/{regid}                     as for groups
    DELETE /enrollments/{regid}                     204
    GET    /registrations                           [registration state, ...]
    GET    /registrations/{regid}                   registration state
    DELETE /registrations/{regid}                   204 (the hub identity stays)
    GET    /devices[?hub=]                          [device, ...]
    GET    /devices/{id}[?hub=]                     device (+ the connected certificate's
                                                    connectionCertificateThumbprint)
    PUT    /devices/{id}?hub=                       {"status"} -> device (creates it if absent)
    PATCH  /devices/{id}[?hub=]                     {"status": "enabled"|"disabled"} -> device
    DELETE /devices/{id}[?hub=]                     204 (closes its live connection)
    GET    /twins/{id}[?hub=]                       twin
    PATCH  /twins/{id}[?hub=]                       {"properties": {"desired": {...}},
                                                     "tags": {...}} -> twin (pushes the patch)
    POST   /twins/{id}/methods[?hub=]               {"methodName", "payload",
                                                     "responseTimeoutInSeconds"}
                                                    -> {"status", "payload"}
    POST   /devices/{id}/messages/deviceBound[?hub=]
                                                    {"payload": JSON | "body": text |
                                                     "bodyBase64": b64, "properties": {...}}
                                                    -> {"messageId"}
    GET    /telemetry?since=N&device=&hub=&limit=&wait=S
                                                    {"messages": [...], "lastSequenceNumber"}
                                                    (wait > 0: long-poll until one arrives)
    GET    /telemetry?follow=1&since=N&device=&hub=&timeout=S
                                                    JSON lines, one message each, until the
                                                    client hangs up (or timeout seconds)
    GET    /registrations/{regid}/history           [{"timeUtc", "event", "status", ...}]
                                                    (DPS events since devcloud started)
    GET    /events                                  server-sent events: ``change`` with
                                                    {"revision"} whenever anything changed
    GET    /  and  /console/[file]                  the web console (devcloud.console)

Devices and twins carry ``modelId`` (Plug and Play), ``lastActivityTime`` and
``connectionStateUpdatedTime`` as IoT Hub's do. A request that changes something (any
method but GET) and carries an ``Origin`` other than the server's own is refused with 403,
so a web page from elsewhere cannot drive devcloud through the browser of its user.

Certificate issuance (enrollments name a policy with ``"credentialPolicy": NAME``)::

    GET    /credentialPolicies                      [policy, ...]
    GET    /credentialPolicies/{name}               policy (with its issuing CA's PEM)
    PUT    /credentialPolicies/{name}               {"validityPeriodInDays": 1-90} -> policy
    DELETE /credentialPolicies/{name}               204 (409 while an enrollment names it)
    GET    /issuedCertificates[?device=&registrationId=]
                                                    [issued certificate, ...] oldest first
    GET    /devices/{id}/renewalRefusal[?hub=]      refusal (404 when renewals are allowed)
    PUT    /devices/{id}/renewalRefusal[?hub=]      {"mode": "error"|"connect",
                                                     "errorCode": 400040} -> refusal
    DELETE /devices/{id}/renewalRefusal[?hub=]      204: renewals work again
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

from devcloud.activity import ChangeFeed, DeviceActivity
from devcloud.console import static_file, stream_changes
from devcloud.dps import Provisioner
from devcloud.errors import (
    DevCloudError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    error_body,
)
from devcloud.hub import HubEndpoint
from devcloud.model import Device, RefusalMode, RenewalRefusal, Twin
from devcloud.pki import PKI
from devcloud.registry import Registry
from devcloud.render import (
    CaLookup,
    HubNames,
    parse_enrollment,
    parse_group,
    parse_policy,
    parse_settings,
    parse_twin_patch,
    render_device,
    render_enrollment,
    render_group,
    render_issued,
    render_policy,
    render_registration,
    render_telemetry,
    render_twin,
)
from devcloud.telemetry import TelemetryLog

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_METHOD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Services:
    """What the REST API operates on."""

    registry: Registry
    hubs: Mapping[str, HubEndpoint]
    hub_names: HubNames
    telemetry: TelemetryLog
    provisioner: Provisioner
    ca_lookup: CaLookup
    #: Holds the credential policies' issuing CAs.
    pki: PKI
    #: ``/hubs`` and ``/dps`` answers (addresses are only known once servers listen).
    describe_hubs: Callable[[], list[dict[str, Any]]]
    describe_dps: Callable[[], dict[str, Any]]
    activity: DeviceActivity
    changes: ChangeFeed


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request (header names in lower case)."""

    method: str
    path: str
    query: Mapping[str, str]
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; :class:`InvalidRequestError` if it is not."""
        try:
            return json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequestError("the request body is not JSON") from None

    def number(self, name: str, default: float) -> float:
        """A numeric query parameter (finite; :class:`InvalidRequestError` otherwise)."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidRequestError(f"query parameter {name!r} must be a finite number")
        return value


@dataclass(frozen=True)
class Response:
    """A JSON response (``body`` None means no content)."""

    status: int
    body: Any = None


@dataclass(frozen=True)
class RawResponse:
    """A response that is not JSON (console files, a redirect)."""

    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """A response whose body ``write`` produces itself, until it ends or the client goes."""

    write: Callable[[asyncio.StreamWriter], Awaitable[None]]
    content_type: str = "application/x-ndjson"


Handler = Callable[[Request, re.Match[str]], Awaitable[Response | RawResponse | Stream]]


class RestApi:
    """The router and handlers; :meth:`start` serves them on ``host:port``."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        #: The task of every connection being served (a long poll can wait minutes).
        self._serving: set[asyncio.Task[None]] = set()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        seg = r"([^/]+)"
        for method, pattern, handler in [
            ("GET", "/health", self._health),
            ("GET", "/hubs", self._hubs),
            ("GET", "/dps", self._dps),
            ("GET", "/dps/stats", self._dps_stats),
            ("GET", "/enrollmentGroups", self._list_groups),
            ("GET", f"/enrollmentGroups/{seg}", self._get_group),
            ("PUT", f"/enrollmentGroups/{seg}", self._put_group),
            ("PATCH", f"/enrollmentGroups/{seg}", self._patch_group),
            ("DELETE", f"/enrollmentGroups/{seg}", self._delete_group),
            ("GET", "/enrollments", self._list_enrollments),
            ("GET", f"/enrollments/{seg}", self._get_enrollment),
            ("PUT", f"/enrollments/{seg}", self._put_enrollment),
            ("PATCH", f"/enrollments/{seg}", self._patch_enrollment),
            ("DELETE", f"/enrollments/{seg}", self._delete_enrollment),
            ("GET", "/registrations", self._list_registrations),
            ("GET", f"/registrations/{seg}", self._get_registration),
            ("DELETE", f"/registrations/{seg}", self._delete_registration),
            ("GET", "/devices", self._list_devices),
            ("GET", f"/devices/{seg}", self._get_device),
            ("PUT", f"/devices/{seg}", self._put_device),
            ("PATCH", f"/devices/{seg}", self._patch_device),
            ("DELETE", f"/devices/{seg}", self._delete_device),
            ("POST", f"/devices/{seg}/messages/deviceBound", self._send_c2d),
            ("GET", f"/twins/{seg}", self._get_twin),
            ("PATCH", f"/twins/{seg}", self._patch_twin),
            ("POST", f"/twins/{seg}/methods", self._invoke_method),
            ("GET", "/telemetry", self._telemetry),
            ("GET", "/credentialPolicies", self._list_policies),
            ("GET", f"/credentialPolicies/{seg}", self._get_policy),
            ("PUT", f"/credentialPolicies/{seg}", self._put_policy),
            ("DELETE", f"/credentialPolicies/{seg}", self._delete_policy),
            ("GET", "/issuedCertificates", self._list_issued),
            ("GET", f"/devices/{seg}/renewalRefusal", self._get_refusal),
            ("PUT", f"/devices/{seg}/renewalRefusal", self._put_refusal),
            ("DELETE", f"/devices/{seg}/renewalRefusal", self._delete_refusal),
            ("GET", f"/registrations/{seg}/history", self._registration_history),
            ("GET", "/events", self._events),
            ("GET", "", self._console_redirect),
            ("GET", "/console", self._console_file),
            ("GET", f"/console/{seg}", self._console_file),
        ]:
            self.routes.append((method, re.compile(f"^{pattern}/?$"), handler))

    # -- serving ----------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0 picks a free port); return the bound address."""
        self._server = await asyncio.start_server(self._serve, host, port)
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def stop(self) -> None:
        """Stop listening; end every request in progress (streams, long polls) and close."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            serving = list(self._serving)
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        current = asyncio.current_task()
        if current is not None:
            self._serving.add(current)
            current.add_done_callback(self._serving.discard)
        try:
            try:
                request = await self._read_request(reader)
            except InvalidRequestError as exc:
                await self._send(writer, Response(400, error_body(exc, self._tracking_id())))
                return
            if request is None:
                return
            result = await self.dispatch(request)
            if isinstance(result, Response):
                await self._send(writer, result)
            elif isinstance(result, RawResponse):
                await self._send_raw(writer, result)
            else:
                writer.write(
                    f"HTTP/1.1 200 OK\r\nContent-Type: {result.content_type}\r\n"
                    "Cache-Control: no-cache\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                # Stream until the handler ends or the client hangs up (EOF on its side).
                streaming = asyncio.ensure_future(result.write(writer))
                hangup = asyncio.ensure_future(reader.read(1))
                await asyncio.wait({streaming, hangup}, return_when=asyncio.FIRST_COMPLETED)
                for task in (streaming, hangup):
                    task.cancel()
                await asyncio.gather(streaming, hangup, return_exceptions=True)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise InvalidRequestError("request head too large") from None
        except asyncio.IncompleteReadError:
            return None
        if len(head) > MAX_HEADER_BYTES:
            raise InvalidRequestError("request head too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise InvalidRequestError("malformed request line")
        method, target, _version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise InvalidRequestError("bad Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise InvalidRequestError("request body too large")
        body = await reader.readexactly(length) if length else b""
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        return Request(method.upper(), urllib.parse.unquote(url.path), query, body, headers)

    async def _send(self, writer: asyncio.StreamWriter, response: Response) -> None:
        reason = HTTPStatus(response.status).phrase
        data = b"" if response.body is None else json.dumps(response.body).encode()
        head = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n"
        )
        if response.body is not None:
            head += "Content-Type: application/json\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()

    async def _send_raw(self, writer: asyncio.StreamWriter, response: RawResponse) -> None:
        reason = HTTPStatus(response.status).phrase
        head = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Length: {len(response.body)}\r\nConnection: close\r\n"
            f"Content-Type: {response.content_type}\r\nCache-Control: no-cache\r\n"
            "X-Content-Type-Options: nosniff\r\n"
        )
        head += "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
        writer.write(head.encode() + b"\r\n" + response.body)
        await writer.drain()

    def _tracking_id(self) -> str:
        return str(uuid.uuid4())

    async def dispatch(self, request: Request) -> Response | RawResponse | Stream:
        """Route ``request`` and turn devcloud errors into JSON error responses."""
        if request.method != "GET" and not _same_origin(request):
            refused = ForbiddenError(
                f"{request.method} from origin {request.headers.get('origin')!r} refused: "
                "only devcloud's own console may change things from a browser"
            )
            return Response(403, error_body(refused, self._tracking_id()))
        allowed: list[str] = []
        for method, pattern, handler in self.routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            try:
                return await handler(request, match)
            except DevCloudError as exc:
                return Response(exc.status, error_body(exc, self._tracking_id()))
            except Exception:  # a devcloud bug: answer 500, keep serving
                log.exception("REST %s %s failed", request.method, request.path)
                error = DevCloudError(f"internal error in {request.method} {request.path}")
                return Response(500, error_body(error, self._tracking_id()))
        if allowed:
            error = DevCloudError(f"{request.method} not allowed; use {sorted(set(allowed))}")
            return Response(405, {**error_body(error, self._tracking_id()), "errorCode": 405000})
        missing = NotFoundError(f"no route for {request.method} {request.path}")
        return Response(404, error_body(missing, self._tracking_id()))

    # -- helpers ----------------------------------------------------------------------------

    def _hub(self, request: Request) -> str | None:
        hub = request.query.get("hub")
        return self.s.hub_names.name(hub) if hub else None

    def _device(self, request: Request, device_id: str) -> Device:
        return self.s.registry.find_device(device_id, self._hub(request))

    def _connected(self, device: Device) -> bool:
        return self.s.hubs[device.hub].is_connected(device.device_id)

    def _render_device(self, device: Device) -> dict[str, Any]:
        seen = self.s.activity.get(device.hub, device.device_id)
        return render_device(device, connected=self._connected(device), seen=seen)

    # -- handlers ---------------------------------------------------------------------------

    async def _health(self, _r: Request, _m: re.Match[str]) -> Response:
        return Response(200, {"status": "ok"})

    async def _hubs(self, _r: Request, _m: re.Match[str]) -> Response:
        return Response(200, self.s.describe_hubs())

    async def _dps(self, _r: Request, _m: re.Match[str]) -> Response:
        return Response(200, self.s.describe_dps())

    async def _dps_stats(self, _r: Request, _m: re.Match[str]) -> Response:
        return Response(200, {"registrations": self.s.registry.stats()})

    async def _list_groups(self, _r: Request, _m: re.Match[str]) -> Response:
        return Response(200, [render_group(g) for g in self.s.registry.groups()])

    async def _get_group(self, _r: Request, m: re.Match[str]) -> Response:
        return Response(200, render_group(self.s.registry.get_group(m[1])))

    async def _put_group(self, r: Request, m: re.Match[str]) -> Response:
        group = parse_group(m[1], r.json(), self.s.hub_names, self.s.ca_lookup)
        return Response(200, render_group(self.s.registry.put_group(group)))

    async def _patch_group(self, r: Request, m: re.Match[str]) -> Response:
        body = r.json()
        if not isinstance(body, dict):
            raise InvalidRequestError("body must be a JSON object")
        group = self.s.registry.get_group(m[1])
        group = replace(group, **parse_settings(body, self.s.hub_names))
        return Response(200, render_group(self.s.registry.put_group(group)))

    async def _delete_group(self, _r: Request, m: re.Match[str]) -> Response:
        self.s.registry.delete_group(m[1])
        return Response(204)

    async def _list_enrollments(self, _r: Request, _m: re.Match[str]) -> Response:
        return Response(200, [render_enrollment(e) for e in self.s.registry.enrollments()])

    async def _get_enrollment(self, _r: Request, m: re.Match[str]) -> Response:
        return Response(200, render_enrollment(self.s.registry.get_enrollment(m[1])))

    async def _put_enrollment(self, r: Request, m: re.Match[str]) -> Response:
        enrollment = parse_enrollment(m[1], r.json(), self.s.hub_names)
        return Response(200, render_enrollment(self.s.registry.put_enrollment(enrollment)))

    async def _patch_enrollment(self, r: Request, m: re.Match[str]) -> Response:
        body = r.json()
        if not isinstance(body, dict):
            raise InvalidRequestError("body must be a JSON object")
        enrollment = self.s.registry.get_enrollment(m[1])
        enrollment = replace(enrollment, **parse_settings(body, self.s.hub_names))
        return Response(200, render_enrollment(self.s.registry.put_enrollment(enrollment)))

    async def _delete_enrollment(self, _r: Request, m: re.Match[str]) -> Response:
        self.s.registry.delete_enrollment(m[1])
        return Response(204)

    async def _list_registrations(self, _r: Request, _m: re.Match[str]) -> Response:
        names = self.s.hub_names
        return Response(
            200, [render_registration(x, names) for x in self.s.registry.registrations()]
        )

    async def _get_registration(self, _r: Request, m: re.Match[str]) -> Response:
        registration = self.s.registry.get_registration(m[1])
        return Response(200, render_registration(registration, self.s.hub_names))

    async def _delete_registration(self, _r: Request, m: re.Match[str]) -> Response:
        self.s.registry.delete_registration(m[1])
        return Response(204)

    async def _list_devices(self, r: Request, _m: re.Match[str]) -> Response:
        devices = self.s.registry.devices(self._hub(r))
        return Response(200, [self._render_device(d) for d in devices])

    async def _get_device(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        body = self._render_device(device)
        session = self.s.hubs[device.hub].sessions.get(device.device_id)
        body["connectionCertificateThumbprint"] = session.thumbprint if session else None
        return Response(200, body)

    def _status(self, r: Request) -> bool | None:
        body = r.json() or {}
        if not isinstance(body, dict):
            raise InvalidRequestError("body must be a JSON object")
        status = body.get("status")
        if status is None:
            return None
        if status not in ("enabled", "disabled"):
            raise InvalidRequestError("status must be 'enabled' or 'disabled'")
        return bool(status == "enabled")

    async def _put_device(self, r: Request, m: re.Match[str]) -> Response:
        hub = self._hub(r)
        if hub is None:
            raise InvalidRequestError("PUT /devices/{id} needs ?hub=NAME")
        enabled = self._status(r)
        registry = self.s.registry
        if registry.device(hub, m[1]) is None:
            device = registry.create_device(hub, m[1], enabled=enabled is not False)
        elif enabled is not None:
            device = registry.set_device_enabled(hub, m[1], enabled)
        else:
            device = registry.get_device(hub, m[1])
        return Response(200, self._render_device(device))

    async def _patch_device(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        enabled = self._status(r)
        if enabled is not None:
            device = self.s.registry.set_device_enabled(device.hub, device.device_id, enabled)
        return Response(200, self._render_device(device))

    async def _delete_device(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        self.s.registry.delete_device(device.hub, device.device_id)
        return Response(204)

    async def _get_twin(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        twin = self.s.registry.get_twin(device.hub, device.device_id)
        return Response(200, self._render_twin(device, twin))

    async def _patch_twin(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        desired, tags = parse_twin_patch(r.json())
        twin = self.s.registry.patch_desired(device.hub, device.device_id, desired, tags)
        return Response(200, self._render_twin(device, twin))

    def _render_twin(self, device: Device, twin: Twin) -> dict[str, Any]:
        seen = self.s.activity.get(device.hub, device.device_id)
        return render_twin(device, twin, connected=self._connected(device), seen=seen)

    async def _invoke_method(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        body = r.json()
        if not isinstance(body, dict) or not isinstance(body.get("methodName"), str):
            raise InvalidRequestError("body must be {'methodName': str, 'payload': ...}")
        timeout = body.get("responseTimeoutInSeconds", DEFAULT_METHOD_TIMEOUT_S)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise InvalidRequestError("responseTimeoutInSeconds must be in (0, 300]")
        response = await self.s.hubs[device.hub].invoke_method(
            device.device_id, body["methodName"], body.get("payload"), float(timeout)
        )
        return Response(200, {"status": response.status, "payload": response.payload})

    async def _send_c2d(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        body = r.json()
        if not isinstance(body, dict):
            raise InvalidRequestError("body must be a JSON object")
        if "bodyBase64" in body:
            try:
                data = base64.b64decode(str(body["bodyBase64"]), validate=True)
            except ValueError:
                raise InvalidRequestError("bodyBase64 is not base64") from None
        elif "body" in body:
            data = str(body["body"]).encode()
        else:
            data = json.dumps(body.get("payload")).encode()
        properties = body.get("properties") or {}
        if not isinstance(properties, dict) or not all(
            isinstance(v, str) for v in properties.values()
        ):
            raise InvalidRequestError("properties must map names to strings")
        message_id = self.s.hubs[device.hub].send_c2d(device.device_id, data, properties)
        return Response(200, {"messageId": message_id})

    # -- certificate issuance ---------------------------------------------------------------

    def _render_policy(self, name: str) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization

        from devcloud.pki import thumbprint

        policy = self.s.registry.get_policy(name)
        ca = self.s.pki.issuing_ca(policy.name)
        pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
        return render_policy(policy, pem, thumbprint(ca.cert))

    async def _list_policies(self, _r: Request, _m: re.Match[str]) -> Response:
        return Response(200, [self._render_policy(p.name) for p in self.s.registry.policies()])

    async def _get_policy(self, _r: Request, m: re.Match[str]) -> Response:
        return Response(200, self._render_policy(m[1]))

    async def _put_policy(self, r: Request, m: re.Match[str]) -> Response:
        policy = self.s.registry.put_policy(parse_policy(m[1], r.json()))
        self.s.pki.issuing_ca(policy.name)  # its CA exists (and is trusted) from now on
        return Response(200, self._render_policy(policy.name))

    async def _delete_policy(self, _r: Request, m: re.Match[str]) -> Response:
        self.s.registry.delete_policy(m[1])
        return Response(204)

    async def _list_issued(self, r: Request, _m: re.Match[str]) -> Response:
        found = self.s.registry.issued_certificates(
            device_id=r.query.get("device") or None,
            registration_id=r.query.get("registrationId") or None,
        )
        return Response(200, [render_issued(c) for c in found])

    @staticmethod
    def _render_refusal(device: Device, refusal: RenewalRefusal) -> dict[str, Any]:
        return {
            "deviceId": device.device_id,
            "hub": device.hub,
            "mode": refusal.mode.value,
            "errorCode": refusal.error_code,
        }

    async def _get_refusal(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        refusal = self.s.registry.renewal_refusal(device.hub, device.device_id)
        if refusal is None:
            raise NotFoundError(f"device {device.device_id!r}: renewals are not refused")
        return Response(200, self._render_refusal(device, refusal))

    async def _put_refusal(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        body = r.json() or {}
        if not isinstance(body, dict):
            raise InvalidRequestError("body must be a JSON object")
        try:
            mode = RefusalMode(body.get("mode", RefusalMode.ERROR.value))
        except ValueError:
            raise InvalidRequestError("mode must be 'error' or 'connect'") from None
        code = body.get("errorCode", 400040)
        if not isinstance(code, int) or isinstance(code, bool) or not 400000 <= code <= 599999:
            raise InvalidRequestError("errorCode must be a six-digit 4xx/5xx code (400040)")
        refusal = RenewalRefusal(mode=mode, error_code=code)
        self.s.registry.set_renewal_refusal(device.hub, device.device_id, refusal)
        return Response(200, self._render_refusal(device, refusal))

    async def _delete_refusal(self, r: Request, m: re.Match[str]) -> Response:
        device = self._device(r, m[1])
        self.s.registry.set_renewal_refusal(device.hub, device.device_id, None)
        return Response(204)

    async def _telemetry(self, r: Request, _m: re.Match[str]) -> Response | Stream:
        since = int(r.number("since", 0))
        device = r.query.get("device") or None
        hub = self._hub(r)
        log = self.s.telemetry
        if r.query.get("follow") in ("1", "true", "yes"):
            timeout_s = r.number("timeout", 0.0)

            async def stream(writer: asyncio.StreamWriter) -> None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout_s if timeout_s > 0 else None
                after = since
                while deadline is None or loop.time() < deadline:
                    wait_s = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                    for message in await log.wait(after, wait_s, device_id=device, hub=hub):
                        writer.write(json.dumps(render_telemetry(message)).encode() + b"\n")
                        after = message.sequence_number
                    await writer.drain()
                    if writer.is_closing():
                        return

            return Stream(stream)
        limit = int(r.number("limit", 1000))
        wait_s = min(r.number("wait", 0.0), 300.0)
        if wait_s > 0:
            found = await log.wait(since, wait_s, device_id=device, hub=hub, limit=limit)
        else:
            found = log.since(since, device_id=device, hub=hub, limit=limit)
        return Response(
            200,
            {
                "messages": [render_telemetry(x) for x in found],
                "lastSequenceNumber": log.last_sequence_number,
            },
        )

    async def _registration_history(self, _r: Request, m: re.Match[str]) -> Response:
        history = self.s.provisioner.history.of(m[1])
        if not history and self.s.registry.registration(m[1]) is None:
            raise NotFoundError(f"registration {m[1]!r} not found")
        return Response(200, history)

    async def _events(self, r: Request, _m: re.Match[str]) -> Stream:
        after = int(r.number("after", -1))
        changes = self.s.changes

        async def stream(writer: asyncio.StreamWriter) -> None:
            await stream_changes(changes, writer, after=after if after >= 0 else None)

        return Stream(stream, "text/event-stream")

    async def _console_redirect(self, _r: Request, _m: re.Match[str]) -> RawResponse:
        return RawResponse(302, b"", "text/plain", {"Location": "/console/"})

    async def _console_file(self, _r: Request, m: re.Match[str]) -> RawResponse:
        found = static_file(m[1] if m.groups() else "")
        if found is None:
            raise NotFoundError("no such console file")
        return RawResponse(200, found.body, found.content_type)


def _same_origin(request: Request) -> bool:
    """No ``Origin`` (not a browser), or the server's own (``http://{Host}``)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"http://{request.headers.get('host', '')}"
