"""DPS allocation policies: hashed, static and custom (a Python callable or a webhook).

Theory of operation. DPS hands each allocation an :class:`AllocationRequest` — the
device's runtime context plus the enrollment's linked hubs, all by *hostname* as Azure
does — and gets back an :class:`AllocationResult` naming one of those hostnames.
``hashed`` is a stable SHA-256 of the registration id over the sorted linked hubs (never
Python's ``hash()``, which is salted per process); ``static`` takes the first linked hub;
``custom`` calls the function registered with :meth:`devcloud.app.DevCloud.set_custom_allocator`
or POSTs Azure's custom-allocation request to a webhook on loopback and parses Azure's
answer ``{"iotHubHostName", "initialTwin", "payload"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devcloud.errors import AllocationError, InvalidRequestError
from devcloud.model import AllocationPolicy

WEBHOOK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AllocationRequest:
    """What a custom allocator learns about the registering device."""

    registration_id: str
    #: The ``payload`` the device sent with its register request.
    payload: Any
    #: Hostnames of the enrollment's linked hubs.
    linked_hubs: tuple[str, ...]
    #: Hostname of the hub the device is currently assigned to, if any.
    current_hub: str | None
    #: ``"enrollmentGroup"`` or ``"individualEnrollment"``.
    enrollment_kind: str
    #: The enrollment, rendered as the Azure service API renders it.
    enrollment: Mapping[str, Any] = field(default_factory=dict)
    #: ``{"subjectName", "sha256Thumbprint", "issuer", ...}`` of the device certificate.
    x509: Mapping[str, Any] = field(default_factory=dict)

    def webhook_body(self) -> dict[str, Any]:
        """The JSON Azure POSTs to a custom-allocation webhook."""
        kind = (
            "enrollmentGroup"
            if self.enrollment_kind == "enrollmentGroup"
            else "individualEnrollment"
        )
        return {
            kind: dict(self.enrollment),
            "deviceRuntimeContext": {
                "registrationId": self.registration_id,
                "currentIotHubHostName": self.current_hub,
                "payload": self.payload,
                "x509": dict(self.x509),
            },
            "linkedHubs": list(self.linked_hubs),
        }


@dataclass(frozen=True)
class AllocationResult:
    """The chosen hub, plus what a custom allocator may add."""

    iot_hub_host_name: str
    #: Azure-shaped ``{"tags": {...}, "properties": {"desired": {...}}}``, replacing the
    #: enrollment's initial twin, or None to keep it.
    initial_twin: Mapping[str, Any] | None = None
    #: Returned to the device in ``registrationState.payload``.
    payload: Any = None

    @classmethod
    def from_json(cls, body: Any) -> AllocationResult:
        """Parse Azure's custom-allocation answer; :class:`AllocationError` if malformed."""
        if not isinstance(body, Mapping) or not isinstance(body.get("iotHubHostName"), str):
            raise AllocationError("custom allocation answer lacks a string 'iotHubHostName'")
        twin = body.get("initialTwin")
        if twin is not None and not isinstance(twin, Mapping):
            raise AllocationError("custom allocation 'initialTwin' must be an object")
        return cls(body["iotHubHostName"], twin, body.get("payload"))


CustomAllocator = Callable[[AllocationRequest], AllocationResult]


def hashed(registration_id: str, linked_hubs: Sequence[str]) -> str:
    """The linked hub picked by a stable SHA-256 of ``registration_id``."""
    if not linked_hubs:
        raise AllocationError("the enrollment has no linked hubs")
    hubs = sorted(linked_hubs)
    digest = hashlib.sha256(registration_id.encode()).digest()
    return hubs[int.from_bytes(digest[:8], "big") % len(hubs)]


def static(linked_hubs: Sequence[str]) -> str:
    """The first linked hub."""
    if not linked_hubs:
        raise AllocationError("the enrollment has no linked hubs")
    return linked_hubs[0]


def check_webhook_url(url: str) -> str:
    """Accept only http(s) URLs on loopback; :class:`InvalidRequestError` otherwise."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequestError(f"webhook URL {url!r} must be http(s)://host[:port]/path")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidRequestError(f"webhook URL {url!r} must be on loopback")
    return url


def _post_json(url: str, body: Mapping[str, Any], timeout_s: float) -> Any:
    data = json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (check_webhook_url allows http(s) only)
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise AllocationError(f"custom allocation webhook answered HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise AllocationError(f"custom allocation webhook failed: {exc}") from exc


async def allocate(
    policy: AllocationPolicy,
    request: AllocationRequest,
    *,
    custom: CustomAllocator | None = None,
    webhook_url: str | None = None,
    webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
) -> AllocationResult:
    """Run ``policy`` for ``request``; the answer always names one of the linked hubs."""
    if policy is AllocationPolicy.HASHED:
        return AllocationResult(hashed(request.registration_id, request.linked_hubs))
    if policy is AllocationPolicy.STATIC:
        return AllocationResult(static(request.linked_hubs))
    if webhook_url:
        url = check_webhook_url(webhook_url)
        body = await asyncio.to_thread(_post_json, url, request.webhook_body(), webhook_timeout_s)
        result = AllocationResult.from_json(body)
    elif custom is not None:
        try:
            result = custom(request)
        except AllocationError:
            raise
        except Exception as exc:
            raise AllocationError(f"custom allocator raised {exc!r}") from exc
        if not isinstance(result, AllocationResult):
            raise AllocationError("custom allocator must return an AllocationResult")
    else:
        raise AllocationError("custom allocation without a webhook URL or a registered allocator")
    if result.iot_hub_host_name not in request.linked_hubs:
        raise AllocationError(
            f"custom allocation chose {result.iot_hub_host_name!r}, "
            f"not one of the linked hubs {list(request.linked_hubs)}"
        )
    return result
