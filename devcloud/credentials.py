"""A hub's certificate renewal endpoint: ``$iothub/credentials`` over MQTT (preview).

Theory of operation. A device that subscribed to ``$iothub/credentials/res/#`` publishes
``$iothub/credentials/POST/issueCertificate/?$rid=R`` with
``{"id": deviceId, "csr": base64 DER, "replace": "*" | rid}`` (``replace`` optional).
:class:`RenewalService` answers on ``$iothub/credentials/res/{status}/?$rid=R``, to the
asking device's live connection, as Azure IoT Hub does (wire details and sources:
README, "Certificate issuance"):

* no ``$rid``: no answer at all;
* a payload that is empty, not JSON (400006), not an object, with a missing or wrong
  ``id``, a missing, over-long (8 KiB) or non-base64 ``csr``, an unknown field or a
  malformed ``replace``: ``400`` with errorCode 400004, at once;
* a device whose enrollment names no credential policy: ``412`` / 412005;
* while a request is pending: without ``replace`` ``409`` / 409005 (its ``requestId``
  in ``info``); with ``replace`` = ``*`` or that request's rid, the pending one is
  dropped unanswered and the new one proceeds; ``replace`` naming no pending request:
  ``412`` / 412001;
* otherwise ``202 {"correlationId", "operationExpires"}``, and after the configured
  delay the CSR is checked (a bad one: ``400`` / 400037) and signed by the device's
  policy CA: ``200 {"correlationId", "certificates": [leaf, issuing CA, root]}``
  (base64 DER).

Fault injection for tests (:meth:`devcloud.registry.Registry.set_renewal_refusal`):
``error`` mode answers the request with the chosen errorCode after the 202 (its status
is the code's first three digits); ``connect`` mode issues the certificate but marks it
refused, so the hubs answer CONNACK 5 to a device presenting it (DPS applies ``connect``
mode to the certificates it issues for the device too: a re-registration is a renewal).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from devcloud.errors import DevCloudError
from devcloud.issuance import CsrError, Issuer, b64_der, check_csr, decode_csr
from devcloud.model import IssuedVia, JsonObject, RefusalMode, utc_iso
from devcloud.registry import Registry

CREDENTIALS_FILTER = "$iothub/credentials/res/#"
ISSUE_PREFIX = "$iothub/credentials/POST/issueCertificate/"
#: How long an accepted request is announced to stay pending (``operationExpires``).
OPERATION_LIFETIME = timedelta(minutes=10)
_REPLACE_RID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{2,34})[A-Za-z0-9]$")
_FIELDS = frozenset({"id", "csr", "replace"})

#: Sends ``(device_id, topic, payload)`` to the device's live connection, if subscribed.
Deliver = Callable[[str, str, bytes], None]


class RenewalError(DevCloudError):
    """An answer other than 202/200, with the status and errorCode Azure uses."""

    def __init__(
        self, status: int, error_code: int, message: str, info: JsonObject | None = None
    ) -> None:
        super().__init__(message, error_code=error_code)
        self.status = status
        self.info = info


@dataclass
class _Pending:
    rid: str
    correlation_id: str
    expires: str
    csr: str
    handle: asyncio.TimerHandle | None = None


class RenewalService:
    """The ``issueCertificate`` operation of one hub."""

    def __init__(
        self,
        hub: str,
        registry: Registry,
        issuer: Issuer,
        deliver: Deliver,
        *,
        delay_s: float = 0.05,
    ) -> None:
        self.hub = hub
        self.registry = registry
        self.issuer = issuer
        self.deliver = deliver
        self.delay_s = delay_s
        self._pending: dict[str, _Pending] = {}

    def pending_rid(self, device_id: str) -> str | None:
        """The rid of the device's pending request, if any."""
        found = self._pending.get(device_id)
        return found.rid if found else None

    def request(self, device_id: str, topic: str, payload: bytes) -> None:
        """Handle one ``issueCertificate`` PUBLISH from ``device_id``."""
        _, _, query = topic.partition("?")
        rid = dict(urllib.parse.parse_qsl(query, keep_blank_values=True)).get("$rid", "")
        if not rid:
            return  # Azure cannot route an answer without a request id
        try:
            body = self._parse(device_id, payload)
            pending = self._accept(device_id, rid, body)
        except RenewalError as exc:
            self._answer_error(device_id, rid, exc)
            return
        self._answer(
            device_id,
            202,
            rid,
            {"correlationId": pending.correlation_id, "operationExpires": pending.expires},
        )
        loop = asyncio.get_running_loop()
        pending.handle = loop.call_later(self.delay_s, self._complete, device_id, pending)

    def _parse(self, device_id: str, payload: bytes) -> dict[str, Any]:
        if not payload:
            raise RenewalError(400, 400004, "the issue certificate request payload is missing")
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise RenewalError(400, 400006, "cannot decode json format") from None
        if not isinstance(body, dict):
            raise RenewalError(400, 400004, "the request payload must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise RenewalError(400, 400004, f"unknown field(s) {unknown}: only id, csr, replace")
        if not isinstance(body.get("id"), str) or not body["id"]:
            raise RenewalError(400, 400004, "the 'id' field is invalid or missing")
        if body["id"] != device_id:
            raise RenewalError(
                400, 400004, "the 'id' field does not match the authenticated device id"
            )
        try:
            decode_csr(body.get("csr"))
        except CsrError as exc:
            raise RenewalError(400, 400004, exc.message) from None
        replace = body.get("replace")
        if replace is not None and (
            not isinstance(replace, str) or (replace != "*" and not _REPLACE_RID.match(replace))
        ):
            raise RenewalError(
                400, 400004, "the 'replace' field must be '*' or a request id of 4-36 [A-Za-z0-9-]"
            )
        return body

    def _accept(self, device_id: str, rid: str, body: dict[str, Any]) -> _Pending:
        if self.registry.device_policy(self.hub, device_id) is None:
            raise RenewalError(412, 412005, "this device's enrollment has no credential policy")
        replace = body.get("replace")
        active = self._pending.get(device_id)
        if active is not None:
            if replace is None:
                raise RenewalError(
                    409,
                    409005,
                    "a credential management operation is already active; "
                    "send 'replace' to cancel it",
                    {
                        "requestId": active.rid,
                        "operationExpires": active.expires,
                        "correlationId": active.correlation_id,
                    },
                )
            if replace not in ("*", active.rid):
                raise RenewalError(
                    412, 412001, "no active certificate request to replace", {"requestId": replace}
                )
            if active.handle is not None:
                active.handle.cancel()
        elif replace not in (None, "*"):
            raise RenewalError(
                412, 412001, "no active certificate request to replace", {"requestId": replace}
            )
        expires = utc_iso(self.registry.current_time() + OPERATION_LIFETIME)
        pending = _Pending(rid, str(uuid.uuid4()), expires, str(body["csr"]))
        self._pending[device_id] = pending
        return pending

    def _complete(self, device_id: str, pending: _Pending) -> None:
        if self._pending.get(device_id) is not pending:
            return
        del self._pending[device_id]
        try:
            self._answer(device_id, 200, pending.rid, self._issue(device_id, pending))
        except RenewalError as exc:
            self._answer_error(device_id, pending.rid, exc)

    def _issue(self, device_id: str, pending: _Pending) -> JsonObject:
        device = self.registry.device(self.hub, device_id)
        policy = self.registry.device_policy(self.hub, device_id)
        if device is None or policy is None:
            raise RenewalError(404, 404001, f"device {device_id!r} no longer exists here")
        try:
            csr = check_csr(decode_csr(pending.csr), device_id, error_code=400037)
        except CsrError as exc:
            raise RenewalError(
                400,
                400037,
                "unable to complete the certificate request",
                {
                    "correlationId": pending.correlation_id,
                    "credentialError": "400000",
                    "credentialMessage": exc.message,
                },
            ) from None
        refusal = self.registry.renewal_refusal(self.hub, device_id)
        if refusal is not None and refusal.mode is RefusalMode.ERROR:
            raise RenewalError(
                refusal.error_code // 1000,
                refusal.error_code,
                "credential management operation failed (devcloud refuses this device's renewals)",
                {"correlationId": pending.correlation_id},
            )
        certs = self.issuer.issue(
            csr,
            policy,
            registration_id=device.registration_id or device_id,
            device_id=device_id,
            hub=self.hub,
            via=IssuedVia.HUB,
            refused=refusal is not None and refusal.mode is RefusalMode.CONNECT,
        )
        return {
            "correlationId": pending.correlation_id,
            "certificates": [b64_der(cert) for cert in certs],
        }

    def _answer(self, device_id: str, status: int, rid: str, body: JsonObject) -> None:
        topic = f"$iothub/credentials/res/{status}/?$rid={urllib.parse.quote(rid, safe='')}"
        self.deliver(device_id, topic, json.dumps(body).encode())

    def _answer_error(self, device_id: str, rid: str, error: RenewalError) -> None:
        self._answer(
            device_id,
            error.status,
            rid,
            {
                "errorCode": error.error_code,
                "message": error.message,
                "trackingId": str(uuid.uuid4()),
                "timestampUtc": self.registry.now(),
                "info": error.info,
            },
        )

    def forget(self, device_id: str) -> None:
        """Drop the device's pending request (the device was deleted)."""
        pending = self._pending.pop(device_id, None)
        if pending is not None and pending.handle is not None:
            pending.handle.cancel()
