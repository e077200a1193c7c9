"""A small synchronous client for devcloud's REST API (stdlib ``urllib`` only).

Used by the ``devcloud`` CLI and by tests. Every method maps to one route of
:mod:`devcloud.rest`. An error answer raises the matching :mod:`devcloud.errors` class
(``NotFoundError`` for 404, ``InvalidRequestError`` for 400, ``ConflictError`` for 409,
``MethodTimeoutError`` for 504, ``DeviceNotOnlineError`` for a method on an offline
device), else :class:`~devcloud.errors.ClientError` with ``status`` (0 when devcloud
cannot be reached). Telemetry waits are long-polls on the server, never sleep loops.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from devcloud.errors import (
    BY_STATUS,
    ClientError,
    DevCloudError,
    DeviceNotOnlineError,
    TelemetryTimeoutError,
)


@dataclass(frozen=True)
class Telemetry:
    """One device-to-cloud message as devcloud stored it."""

    sequence_number: int
    hub: str
    device_id: str
    enqueued_time: str
    body: bytes
    properties: Mapping[str, str]
    system_properties: Mapping[str, str]

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Telemetry:
        """Parse the REST API's rendering of a message."""
        return cls(
            sequence_number=int(data["sequenceNumber"]),
            hub=data["hub"],
            device_id=data["deviceId"],
            enqueued_time=data["enqueuedTimeUtc"],
            body=base64.b64decode(data["bodyBase64"]),
            properties=dict(data["properties"]),
            system_properties=dict(data["systemProperties"]),
        )


def _raise_for(status: int, body: bytes) -> None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    message = f"HTTP {status}"
    code: int | None = None
    if isinstance(data, dict):
        message = str(data.get("message", message))
        raw_code = data.get("errorCode")
        code = raw_code if isinstance(raw_code, int) else None
    if status == 404 and code == DeviceNotOnlineError.error_code:
        raise DeviceNotOnlineError(message)
    cls = BY_STATUS.get(status)
    if cls is not None:
        raise cls(message, error_code=code)
    raise ClientError(message, status=status, error_code=code)


class DevCloudClient:
    """Synchronous access to one devcloud's REST API at ``rest_url``."""

    def __init__(self, rest_url: str, timeout_s: float = 30.0) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.timeout_s = timeout_s

    # -- plumbing ---------------------------------------------------------------------------

    def _url(self, path: str, query: Mapping[str, Any] | None) -> str:
        url = self.rest_url + urllib.parse.quote(path)
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return url

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON answer (None for 204)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(  # noqa: S310 (the URL is our own http:// base)
            self._url(path, query), data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=timeout_s or self.timeout_s
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            _raise_for(exc.code, exc.read())
            raise  # pragma: no cover (_raise_for always raises)
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"devcloud at {self.rest_url} unreachable: {exc}", status=0) from exc
        return json.loads(raw) if raw else None

    # -- service information ----------------------------------------------------------------

    def health(self) -> bool:
        """True if devcloud answers."""
        return bool(self.request("GET", "/health")["status"] == "ok")

    def hubs(self) -> list[dict[str, Any]]:
        """Every hub: name, hostname, host, port, wsPort, connectedDevices."""
        return list(self.request("GET", "/hubs"))

    def dps(self) -> dict[str, Any]:
        """DPS: idScope, host, port, wsPort."""
        return dict(self.request("GET", "/dps"))

    def dps_stats(self) -> dict[str, dict[str, int]]:
        """Register requests (``attempts``) and ``assignments`` per registration id."""
        return dict(self.request("GET", "/dps/stats")["registrations"])

    def registration_attempts(self, registration_id: str) -> int:
        """How many register requests DPS received for ``registration_id``."""
        return int(self.dps_stats().get(registration_id, {}).get("attempts", 0))

    # -- enrollment groups ------------------------------------------------------------------

    @staticmethod
    def _settings(
        *,
        allocation_policy: str | None,
        iot_hubs: list[str] | None,
        webhook_url: str | None,
        reprovision_policy: str | None,
        initial_desired: Mapping[str, Any] | None,
        initial_tags: Mapping[str, Any] | None,
        enabled: bool | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if allocation_policy is not None:
            body["allocationPolicy"] = allocation_policy
        if iot_hubs is not None:
            body["iotHubs"] = list(iot_hubs)
        if webhook_url is not None:
            body["customAllocationDefinition"] = {"webhookUrl": webhook_url}
        if reprovision_policy is not None:
            body["reprovisionPolicy"] = reprovision_policy
        if initial_desired is not None or initial_tags is not None:
            body["initialTwin"] = {
                "tags": dict(initial_tags or {}),
                "properties": {"desired": dict(initial_desired or {})},
            }
        if enabled is not None:
            body["provisioningStatus"] = "enabled" if enabled else "disabled"
        return body

    def put_enrollment_group(
        self,
        group_id: str,
        *,
        certificate_pem: str | None = None,
        ca_reference: str | None = None,
        allocation_policy: str = "hashed",
        iot_hubs: list[str] | None = None,
        webhook_url: str | None = None,
        reprovision_policy: str = "reprovisionandmigratedata",
        initial_desired: Mapping[str, Any] | None = None,
        initial_tags: Mapping[str, Any] | None = None,
        enabled: bool = True,
        credential_policy: str | None = None,
    ) -> dict[str, Any]:
        """Create or replace a group on a CA PEM, or on ``ca_reference``
        (``devcloud-root`` / ``devcloud-intermediate``, the default). With
        ``credential_policy``, DPS signs its devices' CSRs with that policy's CA."""
        if certificate_pem is not None:
            x509: dict[str, Any] = {
                "signingCertificates": {"primary": {"certificate": certificate_pem}}
            }
        else:
            x509 = {"caReferences": {"primary": ca_reference or "devcloud-intermediate"}}
        body = {
            "enrollmentGroupId": group_id,
            "attestation": {"type": "x509", "x509": x509},
            **self._settings(
                allocation_policy=allocation_policy,
                iot_hubs=iot_hubs if iot_hubs is not None else [],
                webhook_url=webhook_url,
                reprovision_policy=reprovision_policy,
                initial_desired=initial_desired or {},
                initial_tags=initial_tags,
                enabled=enabled,
            ),
        }
        if credential_policy is not None:
            body["credentialPolicy"] = credential_policy
        return dict(self.request("PUT", f"/enrollmentGroups/{group_id}", body))

    def get_enrollment_group(self, group_id: str) -> dict[str, Any]:
        """One group."""
        return dict(self.request("GET", f"/enrollmentGroups/{group_id}"))

    def list_enrollment_groups(self) -> list[dict[str, Any]]:
        """Every group."""
        return list(self.request("GET", "/enrollmentGroups"))

    def delete_enrollment_group(self, group_id: str) -> None:
        """Delete a group."""
        self.request("DELETE", f"/enrollmentGroups/{group_id}")

    def set_group_allocation(
        self,
        group_id: str,
        allocation_policy: str | None = None,
        iot_hubs: list[str] | None = None,
        *,
        webhook_url: str | None = None,
        reprovision_policy: str | None = None,
        enabled: bool | None = None,
    ) -> dict[str, Any]:
        """Change a group's allocation policy, linked hubs, webhook, reprovision policy."""
        body = self._settings(
            allocation_policy=allocation_policy,
            iot_hubs=iot_hubs,
            webhook_url=webhook_url,
            reprovision_policy=reprovision_policy,
            initial_desired=None,
            initial_tags=None,
            enabled=enabled,
        )
        return dict(self.request("PATCH", f"/enrollmentGroups/{group_id}", body))

    # -- individual enrollments -------------------------------------------------------------

    def put_enrollment(
        self,
        registration_id: str,
        *,
        certificate_pem: str | None = None,
        thumbprint: str | None = None,
        device_id: str | None = None,
        allocation_policy: str = "hashed",
        iot_hubs: list[str] | None = None,
        webhook_url: str | None = None,
        reprovision_policy: str = "reprovisionandmigratedata",
        initial_desired: Mapping[str, Any] | None = None,
        initial_tags: Mapping[str, Any] | None = None,
        enabled: bool = True,
        credential_policy: str | None = None,
    ) -> dict[str, Any]:
        """Create or replace an individual enrollment (optionally pinned to one leaf;
        with ``credential_policy``, DPS signs the device's CSRs with that policy's CA)."""
        body: dict[str, Any] = {"registrationId": registration_id}
        if certificate_pem is not None:
            primary: dict[str, Any] = {"certificate": certificate_pem}
        elif thumbprint is not None:
            primary = {"info": {"sha256Thumbprint": thumbprint}}
        else:
            primary = {}
        if primary:
            body["attestation"] = {
                "type": "x509",
                "x509": {"clientCertificates": {"primary": primary}},
            }
        if device_id is not None:
            body["deviceId"] = device_id
        body.update(
            self._settings(
                allocation_policy=allocation_policy,
                iot_hubs=iot_hubs if iot_hubs is not None else [],
                webhook_url=webhook_url,
                reprovision_policy=reprovision_policy,
                initial_desired=initial_desired or {},
                initial_tags=initial_tags,
                enabled=enabled,
            )
        )
        if credential_policy is not None:
            body["credentialPolicy"] = credential_policy
        return dict(self.request("PUT", f"/enrollments/{registration_id}", body))

    def get_enrollment(self, registration_id: str) -> dict[str, Any]:
        """One individual enrollment."""
        return dict(self.request("GET", f"/enrollments/{registration_id}"))

    def list_enrollments(self) -> list[dict[str, Any]]:
        """Every individual enrollment."""
        return list(self.request("GET", "/enrollments"))

    def delete_enrollment(self, registration_id: str) -> None:
        """Delete an individual enrollment."""
        self.request("DELETE", f"/enrollments/{registration_id}")

    def set_enrollment_allocation(
        self,
        registration_id: str,
        allocation_policy: str | None = None,
        iot_hubs: list[str] | None = None,
        *,
        webhook_url: str | None = None,
        reprovision_policy: str | None = None,
        enabled: bool | None = None,
    ) -> dict[str, Any]:
        """Change an individual enrollment's allocation settings."""
        body = self._settings(
            allocation_policy=allocation_policy,
            iot_hubs=iot_hubs,
            webhook_url=webhook_url,
            reprovision_policy=reprovision_policy,
            initial_desired=None,
            initial_tags=None,
            enabled=enabled,
        )
        return dict(self.request("PATCH", f"/enrollments/{registration_id}", body))

    # -- certificate issuance ---------------------------------------------------------------

    def put_credential_policy(self, name: str, validity_days: int = 30) -> dict[str, Any]:
        """Create or replace a credential policy (its issuing CA is made on creation)."""
        body = {"validityPeriodInDays": validity_days}
        return dict(self.request("PUT", f"/credentialPolicies/{name}", body))

    def get_credential_policy(self, name: str) -> dict[str, Any]:
        """One policy, with ``certificate.issuingCertificate`` (PEM)."""
        return dict(self.request("GET", f"/credentialPolicies/{name}"))

    def list_credential_policies(self) -> list[dict[str, Any]]:
        """Every credential policy."""
        return list(self.request("GET", "/credentialPolicies"))

    def delete_credential_policy(self, name: str) -> None:
        """Delete a policy (ConflictError while an enrollment names it)."""
        self.request("DELETE", f"/credentialPolicies/{name}")

    def issued_certificates(
        self, device_id: str | None = None, registration_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Certificates devcloud signed from CSRs, oldest first."""
        query = {"device": device_id, "registrationId": registration_id}
        return list(self.request("GET", "/issuedCertificates", query=query))

    def refuse_renewals(
        self,
        device_id: str,
        hub: str | None = None,
        *,
        mode: str = "error",
        error_code: int = 400040,
    ) -> dict[str, Any]:
        """Make the hub refuse the device's renewals: ``error`` answers ``error_code``,
        ``connect`` issues the certificate but refuses CONNECT with it."""
        body = {"mode": mode, "errorCode": error_code}
        return dict(
            self.request("PUT", f"/devices/{device_id}/renewalRefusal", body, query={"hub": hub})
        )

    def allow_renewals(self, device_id: str, hub: str | None = None) -> None:
        """Undo :meth:`refuse_renewals`."""
        self.request("DELETE", f"/devices/{device_id}/renewalRefusal", query={"hub": hub})

    # -- registrations ----------------------------------------------------------------------

    def list_registrations(self) -> list[dict[str, Any]]:
        """Every DPS registration state."""
        return list(self.request("GET", "/registrations"))

    def get_registration(self, registration_id: str) -> dict[str, Any]:
        """One registration state (assignedHub is the hostname, hub the name)."""
        return dict(self.request("GET", f"/registrations/{registration_id}"))

    def delete_registration(self, registration_id: str) -> None:
        """Forget a registration state."""
        self.request("DELETE", f"/registrations/{registration_id}")

    def registration_history(self, registration_id: str) -> list[dict[str, Any]]:
        """What DPS did with this registration id's requests since devcloud started.

        Oldest first; each ``{"timeUtc", "event", "status", ...}`` with ``event`` one of
        ``accepted`` (202), ``assigned`` (``hub``, ``substatus``), ``failed`` or
        ``refused`` (``errorCode``, ``message``).
        """
        return list(self.request("GET", f"/registrations/{registration_id}/history"))

    # -- devices ----------------------------------------------------------------------------

    def list_devices(self, hub: str | None = None) -> list[dict[str, Any]]:
        """Devices of every hub, or of ``hub``."""
        return list(self.request("GET", "/devices", query={"hub": hub}))

    def get_device(self, device_id: str, hub: str | None = None) -> dict[str, Any]:
        """One device (status, connectionState, hub, ...)."""
        return dict(self.request("GET", f"/devices/{device_id}", query={"hub": hub}))

    def create_device(self, device_id: str, hub: str, *, enabled: bool = True) -> dict[str, Any]:
        """Create a device identity in ``hub`` directly (without DPS)."""
        body = {"status": "enabled" if enabled else "disabled"}
        return dict(self.request("PUT", f"/devices/{device_id}", body, query={"hub": hub}))

    def enable_device(self, device_id: str, hub: str | None = None) -> dict[str, Any]:
        """Enable a device."""
        return dict(
            self.request(
                "PATCH", f"/devices/{device_id}", {"status": "enabled"}, query={"hub": hub}
            )
        )

    def disable_device(self, device_id: str, hub: str | None = None) -> dict[str, Any]:
        """Disable a device; its live connection is closed at once."""
        return dict(
            self.request(
                "PATCH", f"/devices/{device_id}", {"status": "disabled"}, query={"hub": hub}
            )
        )

    def delete_device(self, device_id: str, hub: str | None = None) -> None:
        """Delete a device; its live connection is closed at once."""
        self.request("DELETE", f"/devices/{device_id}", query={"hub": hub})

    # -- twins, methods, C2D ----------------------------------------------------------------

    def get_twin(self, device_id: str, hub: str | None = None) -> dict[str, Any]:
        """The twin: ``properties.desired`` / ``properties.reported`` with ``$version``."""
        return dict(self.request("GET", f"/twins/{device_id}", query={"hub": hub}))

    def patch_twin_desired(
        self,
        device_id: str,
        desired: Mapping[str, Any],
        *,
        tags: Mapping[str, Any] | None = None,
        hub: str | None = None,
    ) -> dict[str, Any]:
        """Merge ``desired`` into the desired properties (pushed to a connected device)."""
        body: dict[str, Any] = {"properties": {"desired": dict(desired)}}
        if tags:
            body["tags"] = dict(tags)
        return dict(self.request("PATCH", f"/twins/{device_id}", body, query={"hub": hub}))

    def invoke_method(
        self,
        device_id: str,
        method_name: str,
        payload: Any = None,
        *,
        timeout_s: float = 30.0,
        hub: str | None = None,
    ) -> tuple[int, Any]:
        """Invoke a direct method; return ``(status, payload)`` from the device."""
        body = {
            "methodName": method_name,
            "payload": payload,
            "responseTimeoutInSeconds": timeout_s,
        }
        answer = self.request(
            "POST",
            f"/twins/{device_id}/methods",
            body,
            query={"hub": hub},
            timeout_s=timeout_s + 10.0,
        )
        return int(answer["status"]), answer["payload"]

    def send_c2d(
        self,
        device_id: str,
        payload: Any = None,
        *,
        body: bytes | str | None = None,
        properties: Mapping[str, str] | None = None,
        hub: str | None = None,
    ) -> str:
        """Send a cloud-to-device message (JSON ``payload``, or raw ``body``); return $.mid."""
        request: dict[str, Any] = {"properties": dict(properties or {})}
        if isinstance(body, bytes):
            request["bodyBase64"] = base64.b64encode(body).decode()
        elif isinstance(body, str):
            request["body"] = body
        else:
            request["payload"] = payload
        path = f"/devices/{device_id}/messages/deviceBound"
        return str(self.request("POST", path, request, query={"hub": hub})["messageId"])

    # -- telemetry --------------------------------------------------------------------------

    def telemetry(
        self,
        since: int = 0,
        *,
        device_id: str | None = None,
        hub: str | None = None,
        limit: int | None = None,
        wait_s: float = 0.0,
    ) -> list[Telemetry]:
        """Messages after sequence number ``since`` (long-polls up to ``wait_s`` for one)."""
        query: dict[str, Any] = {"since": since, "device": device_id, "hub": hub, "limit": limit}
        if wait_s > 0:
            query["wait"] = wait_s
        answer = self.request("GET", "/telemetry", query=query, timeout_s=wait_s + self.timeout_s)
        return [Telemetry.from_json(m) for m in answer["messages"]]

    def last_sequence_number(self) -> int:
        """The newest message's sequence number (0 if none): a starting point for waits."""
        answer = self.request("GET", "/telemetry", query={"limit": 0})
        return int(answer["lastSequenceNumber"])

    def wait_for_telemetry(
        self,
        *,
        since: int = 0,
        device_id: str | None = None,
        hub: str | None = None,
        count: int = 1,
        timeout_s: float = 10.0,
    ) -> list[Telemetry]:
        """Wait until ``count`` messages after ``since`` arrived; :class:`TelemetryTimeoutError`
        (a ``TimeoutError``) with the ones that did arrive otherwise."""
        deadline = time.monotonic() + timeout_s
        found: list[Telemetry] = []
        after = since
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TelemetryTimeoutError(
                    f"{len(found)} of {count} messages within {timeout_s} s", received=found
                )
            batch = self.telemetry(
                after, device_id=device_id, hub=hub, limit=count - len(found), wait_s=remaining
            )
            found.extend(batch)
            if batch:
                after = batch[-1].sequence_number
        return found

    def follow_telemetry(
        self,
        since: int = 0,
        *,
        device_id: str | None = None,
        hub: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[Telemetry]:
        """Stream messages as they arrive (``GET /telemetry?follow=1``), until ``timeout_s``."""
        query: dict[str, Any] = {"follow": 1, "since": since, "device": device_id, "hub": hub}
        if timeout_s is not None:
            query["timeout"] = timeout_s
        request = urllib.request.Request(self._url("/telemetry", query))  # noqa: S310
        try:
            response = urllib.request.urlopen(  # noqa: S310
                request, timeout=(timeout_s or 0) + self.timeout_s
            )
        except urllib.error.HTTPError as exc:
            _raise_for(exc.code, exc.read())
            raise  # pragma: no cover
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"devcloud at {self.rest_url} unreachable: {exc}", status=0) from exc
        with response:
            for line in response:
                if line.strip():
                    yield Telemetry.from_json(json.loads(line))


__all__ = ["DevCloudClient", "DevCloudError", "Telemetry"]
