"""Azure-shaped JSON for devcloud's records, both ways.

The REST API and the custom-allocation webhook speak the JSON of Azure's DPS and IoT Hub
service APIs (``enrollmentGroupId``, ``attestation.x509.signingCertificates``,
``allocationPolicy``, ``reprovisionPolicy``, ``initialTwin.properties.desired``, twins
with ``properties.desired.$version`` ...). This module turns records into that JSON and
parses request bodies into records, raising :class:`InvalidRequestError` with the path of
the offending field. Hubs are referred to by devcloud hub *name* in ``iotHubs``; a hub's
hostname is accepted wherever a name is.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from devcloud.activity import Seen
from devcloud.allocation import check_webhook_url
from devcloud.errors import InvalidRequestError, NotFoundError
from devcloud.model import (
    AllocationPolicy,
    CredentialPolicy,
    Device,
    EnrollmentGroup,
    IndividualEnrollment,
    InitialTwin,
    IssuedCertificate,
    JsonObject,
    Registration,
    ReprovisionPolicy,
    TelemetryMessage,
    Twin,
    thumbprint_of_pem,
)

#: Resolves a named CA (``caReferences``) to its PEM; raises NotFoundError.
CaLookup = Callable[[str], str]


@dataclass(frozen=True)
class HubNames:
    """Maps hub names to hostnames and back."""

    hostnames: Mapping[str, str]

    def name(self, name_or_hostname: str) -> str:
        """The hub name for a name or a hostname; :class:`InvalidRequestError` if unknown."""
        if name_or_hostname in self.hostnames:
            return name_or_hostname
        for name, hostname in self.hostnames.items():
            if hostname == name_or_hostname:
                return name
        raise InvalidRequestError(
            f"unknown hub {name_or_hostname!r}; hubs are {sorted(self.hostnames)}"
        )

    def hostname(self, name: str) -> str:
        """The hostname of hub ``name``."""
        return self.hostnames[name]


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{where} must be a JSON object")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{where} must be a non-empty string")
    return value


# -- settings shared by groups and individual enrollments ------------------------------------


def parse_settings(body: Mapping[str, Any], hubs: HubNames) -> dict[str, Any]:
    """The allocation / reprovision / twin / status fields present in ``body``, as record fields."""
    changes: dict[str, Any] = {}
    if "allocationPolicy" in body:
        try:
            changes["allocation"] = AllocationPolicy(str(body["allocationPolicy"]).lower())
        except ValueError:
            raise InvalidRequestError(
                "allocationPolicy must be one of hashed, static, custom"
            ) from None
    if "iotHubs" in body:
        names = body["iotHubs"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidRequestError("iotHubs must be a list of hub names or hostnames")
        changes["iot_hubs"] = tuple(hubs.name(n) for n in names)
    if "customAllocationDefinition" in body:
        definition = body["customAllocationDefinition"]
        if definition is None:
            changes["webhook_url"] = None
        else:
            url = _obj(definition, "customAllocationDefinition").get("webhookUrl")
            changes["webhook_url"] = check_webhook_url(_str(url, "webhookUrl")) if url else None
    if "reprovisionPolicy" in body:
        policy = body["reprovisionPolicy"]
        if isinstance(policy, str):
            try:
                changes["reprovision"] = ReprovisionPolicy(policy.lower())
            except ValueError:
                names = [p.value for p in ReprovisionPolicy]
                raise InvalidRequestError(f"reprovisionPolicy must be one of {names}") from None
        else:
            flags = _obj(policy, "reprovisionPolicy")
            changes["reprovision"] = ReprovisionPolicy.from_flags(
                bool(flags.get("updateHubAssignment", True)),
                bool(flags.get("migrateDeviceData", True)),
            )
    if "initialTwin" in body:
        changes["initial_twin"] = parse_initial_twin(body["initialTwin"])
    if "provisioningStatus" in body:
        status = body["provisioningStatus"]
        if status not in ("enabled", "disabled"):
            raise InvalidRequestError("provisioningStatus must be 'enabled' or 'disabled'")
        changes["enabled"] = status == "enabled"
    if "credentialPolicy" in body:
        policy = body["credentialPolicy"]
        if isinstance(policy, Mapping):  # {"name": ...} is accepted too
            policy = policy.get("name")
        changes["credential_policy"] = None if policy is None else _str(policy, "credentialPolicy")
    return changes


def parse_initial_twin(value: Any) -> InitialTwin:
    """Azure's ``{"tags": {...}, "properties": {"desired": {...}}}``."""
    if value is None:
        return InitialTwin()
    twin = _obj(value, "initialTwin")
    props = _obj(twin.get("properties") or {}, "initialTwin.properties")
    desired = _obj(props.get("desired") or {}, "initialTwin.properties.desired")
    tags = _obj(twin.get("tags") or {}, "initialTwin.tags")
    return InitialTwin(desired=dict(desired), tags=dict(tags))


def render_initial_twin(twin: InitialTwin) -> JsonObject:
    """Azure's ``initialTwin`` shape."""
    return {"tags": dict(twin.tags), "properties": {"desired": dict(twin.desired)}}


def _render_settings(e: EnrollmentGroup | IndividualEnrollment) -> JsonObject:
    return {
        "allocationPolicy": e.allocation.value,
        "iotHubs": list(e.iot_hubs),
        "customAllocationDefinition": {"webhookUrl": e.webhook_url, "apiVersion": "2019-03-31"}
        if e.webhook_url
        else None,
        "reprovisionPolicy": {
            "updateHubAssignment": e.reprovision.update_hub_assignment,
            "migrateDeviceData": e.reprovision.migrate_device_data,
            "policy": e.reprovision.value,
        },
        "initialTwin": render_initial_twin(e.initial_twin),
        "provisioningStatus": "enabled" if e.enabled else "disabled",
        "credentialPolicy": e.credential_policy,
        "etag": e.etag,
        "createdDateTimeUtc": e.created,
        "lastUpdatedDateTimeUtc": e.updated,
    }


# -- enrollment groups ------------------------------------------------------------------------


def parse_group(group_id: str, body: Any, hubs: HubNames, ca_lookup: CaLookup) -> EnrollmentGroup:
    """An :class:`EnrollmentGroup` from the body of ``PUT /enrollmentGroups/{id}``."""
    body = _obj(body, "body")
    if body.get("enrollmentGroupId", group_id) != group_id:
        raise InvalidRequestError("enrollmentGroupId differs from the id in the path")
    x509 = _obj(_obj(body.get("attestation"), "attestation").get("x509"), "attestation.x509")
    if "caReferences" in x509:
        name = _str(_obj(x509["caReferences"], "caReferences").get("primary"), "primary")
        try:
            pem = ca_lookup(name)
        except NotFoundError as exc:
            raise InvalidRequestError(str(exc)) from exc
    else:
        signing = _obj(x509.get("signingCertificates"), "attestation.x509.signingCertificates")
        primary = _obj(signing.get("primary"), "signingCertificates.primary")
        pem = _str(primary.get("certificate"), "signingCertificates.primary.certificate")
    thumbprint_of_pem(pem)
    group = EnrollmentGroup(group_id=group_id, signing_cert_pem=pem)
    return replace(group, **parse_settings(body, hubs))


def render_group(group: EnrollmentGroup) -> JsonObject:
    """Azure's enrollment group JSON (plus the signing cert's SHA-256 thumbprint)."""
    return {
        "enrollmentGroupId": group.group_id,
        "attestation": {
            "type": "x509",
            "x509": {
                "signingCertificates": {
                    "primary": {
                        "certificate": group.signing_cert_pem,
                        "info": {"sha256Thumbprint": group.thumbprint},
                    }
                }
            },
        },
        **_render_settings(group),
    }


# -- individual enrollments -------------------------------------------------------------------


def parse_enrollment(registration_id: str, body: Any, hubs: HubNames) -> IndividualEnrollment:
    """An :class:`IndividualEnrollment` from the body of ``PUT /enrollments/{id}``.

    ``attestation.x509.clientCertificates.{primary,secondary}`` may hold a ``certificate``
    PEM or ``info.sha256Thumbprint``; without attestation any verified certificate whose
    CN is the registration id is accepted.
    """
    body = _obj(body, "body")
    if body.get("registrationId", registration_id) != registration_id:
        raise InvalidRequestError("registrationId differs from the id in the path")
    thumbprints: list[str] = []
    attestation = body.get("attestation")
    if attestation is not None:
        x509 = _obj(_obj(attestation, "attestation").get("x509"), "attestation.x509")
        certs = _obj(x509.get("clientCertificates") or {}, "x509.clientCertificates")
        for slot in ("primary", "secondary"):
            if certs.get(slot) is None:
                continue
            entry = _obj(certs[slot], f"clientCertificates.{slot}")
            if entry.get("certificate"):
                thumbprints.append(thumbprint_of_pem(_str(entry["certificate"], slot)))
            else:
                info = _obj(entry.get("info"), f"clientCertificates.{slot}.info")
                thumbprints.append(_str(info.get("sha256Thumbprint"), "sha256Thumbprint"))
    device_id = body.get("deviceId")
    if device_id is not None:
        device_id = _str(device_id, "deviceId")
    enrollment = IndividualEnrollment(
        registration_id=registration_id, thumbprints=tuple(thumbprints), device_id=device_id
    )
    return replace(enrollment, **parse_settings(body, hubs))


def render_enrollment(e: IndividualEnrollment) -> JsonObject:
    """Azure's individual enrollment JSON."""
    certs = {
        slot: {"info": {"sha256Thumbprint": tp}}
        for slot, tp in zip(("primary", "secondary"), e.thumbprints, strict=False)
    }
    return {
        "registrationId": e.registration_id,
        "deviceId": e.device_id,
        "attestation": {"type": "x509", "x509": {"clientCertificates": certs}},
        **_render_settings(e),
    }


# -- registrations, devices, twins, telemetry ------------------------------------------------


def render_registration(r: Registration, hubs: HubNames) -> JsonObject:
    """DPS's device registration state (``assignedHub`` is the hub's hostname)."""
    return {
        "registrationId": r.registration_id,
        "deviceId": r.device_id,
        "assignedHub": hubs.hostname(r.assigned_hub),
        "hub": r.assigned_hub,
        "status": r.status,
        "substatus": r.substatus,
        "createdDateTimeUtc": r.created,
        "lastUpdatedDateTimeUtc": r.updated,
        "etag": r.etag,
        "payload": r.payload,
        "enrollment": r.enrollment,
    }


#: What Azure shows for a time that never happened (``lastActivityTime`` of a new device).
NEVER = "0001-01-01T00:00:00Z"


def render_device(d: Device, *, connected: bool, seen: Seen | None = None) -> JsonObject:
    """IoT Hub's device identity JSON, plus ``hub`` and ``modelId``."""
    seen = seen or Seen()
    return {
        "deviceId": d.device_id,
        "hub": d.hub,
        "generationId": d.generation_id,
        "etag": d.etag,
        "status": d.status,
        "connectionState": "Connected" if connected else "Disconnected",
        "authentication": {"type": "certificateAuthority"},
        "capabilities": {"iotEdge": False},
        "createdDateTimeUtc": d.created,
        "lastUpdatedDateTimeUtc": d.updated,
        "registrationId": d.registration_id,
        "modelId": d.model_id or "",
        "lastActivityTime": seen.last_activity or NEVER,
        "connectionStateUpdatedTime": seen.connection_state_updated or NEVER,
    }


def render_twin(d: Device, twin: Twin, *, connected: bool, seen: Seen | None = None) -> JsonObject:
    """IoT Hub's twin JSON (``modelId`` is ``""`` when the device announced none)."""
    view = twin.device_view()
    seen = seen or Seen()
    return {
        "deviceId": d.device_id,
        "hub": d.hub,
        "etag": d.etag,
        "modelId": d.model_id or "",
        "status": d.status,
        "connectionState": "Connected" if connected else "Disconnected",
        "lastActivityTime": seen.last_activity or NEVER,
        "version": twin.desired_version + twin.reported_version,
        "tags": dict(twin.tags),
        "properties": {"desired": view["desired"], "reported": view["reported"]},
    }


def parse_twin_patch(body: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """``(desired, tags)`` from ``PATCH /twins/{id}`` ``{"properties": {"desired"}, "tags"}``."""
    body = _obj(body, "body")
    props = _obj(body.get("properties") or {}, "properties")
    if "reported" in props:
        raise InvalidRequestError("reported properties are written by the device only")
    desired = _obj(props.get("desired") or {}, "properties.desired")
    tags = _obj(body.get("tags") or {}, "tags")
    return desired, tags


def render_telemetry(m: TelemetryMessage) -> JsonObject:
    """A stored device-to-cloud message; ``body`` is text when the body is UTF-8."""
    try:
        text: str | None = m.body.decode()
    except UnicodeDecodeError:
        text = None
    return {
        "sequenceNumber": m.sequence_number,
        "hub": m.hub,
        "deviceId": m.device_id,
        "enqueuedTimeUtc": m.enqueued_time,
        "properties": dict(m.properties),
        "systemProperties": dict(m.system_properties),
        "body": text,
        "bodyBase64": base64.b64encode(m.body).decode(),
    }


# -- certificate issuance ------------------------------------------------------------------------


def parse_policy(name: str, body: Any) -> CredentialPolicy:
    """A :class:`CredentialPolicy` from ``PUT /credentialPolicies/{name}``.

    ``{"validityPeriodInDays": N}``, or Azure's nesting
    ``{"certificate": {"leafCertificateConfiguration": {"validityPeriodInDays": N}}}``.
    """
    body = _obj(body, "body")
    if body.get("name", name) != name:
        raise InvalidRequestError("name differs from the name in the path")
    days: Any = body.get("validityPeriodInDays")
    if days is None and "certificate" in body:
        cert = _obj(body["certificate"], "certificate")
        leaf = _obj(cert.get("leafCertificateConfiguration"), "leafCertificateConfiguration")
        days = leaf.get("validityPeriodInDays")
    if days is None:
        return CredentialPolicy(name=name)
    if not isinstance(days, int) or isinstance(days, bool):
        raise InvalidRequestError("validityPeriodInDays must be a whole number of days")
    return CredentialPolicy(name=name, validity_days=days)


def render_policy(policy: CredentialPolicy, issuing_pem: str, thumbprint: str) -> JsonObject:
    """A credential policy with its issuing CA (PEM and SHA-256 thumbprint)."""
    return {
        "name": policy.name,
        "validityPeriodInDays": policy.validity_days,
        "certificate": {
            "leafCertificateConfiguration": {"validityPeriodInDays": policy.validity_days},
            "issuingCertificate": issuing_pem,
            "issuingCertificateThumbprint": thumbprint,
        },
        "etag": policy.etag,
        "createdDateTimeUtc": policy.created,
        "lastUpdatedDateTimeUtc": policy.updated,
    }


def render_issued(c: IssuedCertificate) -> JsonObject:
    """A certificate devcloud signed from a CSR."""
    return {
        "sha256Thumbprint": c.thumbprint,
        "serialNumber": c.serial,
        "registrationId": c.registration_id,
        "deviceId": c.device_id,
        "hub": c.hub,
        "credentialPolicy": c.policy,
        "notBeforeUtc": c.not_before,
        "notAfterUtc": c.not_after,
        "issuedVia": c.via.value,
        "issuedDateTimeUtc": c.issued,
        "refusedAtConnect": c.refused,
    }
