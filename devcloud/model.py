"""devcloud's records: enrollments, devices, twins, registrations, telemetry.

All are frozen dataclasses. Each persisted record converts to and from a plain JSON
"record" (``to_record`` / ``from_record``) — the only shape the stores see, so the memory
and SQLite stores cannot drift apart. The REST API renders its own Azure-shaped JSON in
:mod:`devcloud.rest`; these records are the internal truth.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from devcloud.errors import InvalidRequestError

JsonObject = dict[str, Any]


class AllocationPolicy(StrEnum):
    """How DPS picks a hub among an enrollment's linked hubs."""

    HASHED = "hashed"
    STATIC = "static"
    CUSTOM = "custom"


class ReprovisionPolicy(StrEnum):
    """What DPS does when a device that is already assigned registers again."""

    MIGRATE = "reprovisionandmigratedata"
    RESET = "reprovisionandresetdata"
    NEVER = "neverreprovision"

    @property
    def update_hub_assignment(self) -> bool:
        """Azure's ``reprovisionPolicy.updateHubAssignment``."""
        return self is not ReprovisionPolicy.NEVER

    @property
    def migrate_device_data(self) -> bool:
        """Azure's ``reprovisionPolicy.migrateDeviceData``."""
        return self is not ReprovisionPolicy.RESET

    @classmethod
    def from_flags(
        cls, update_hub_assignment: bool, migrate_device_data: bool
    ) -> ReprovisionPolicy:
        """Map Azure's two booleans onto the three policies."""
        if not update_hub_assignment:
            return cls.NEVER
        return cls.MIGRATE if migrate_device_data else cls.RESET


def utc_iso(moment: datetime) -> str:
    """Azure's timestamp format: ISO 8601 in UTC with a trailing ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def thumbprint_of_pem(pem: str) -> str:
    """SHA-256 thumbprint (upper-case hex) of the first certificate in ``pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise InvalidRequestError(f"not a PEM certificate: {exc}") from exc
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> JsonObject:
    """Apply a twin patch: nested objects merge, ``null`` deletes, anything else replaces."""
    merged: JsonObject = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_patch(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = merge_patch({}, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def new_etag(*parts: object) -> str:
    """A short opaque etag derived from ``parts``."""
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()
    return digest[:16]


@dataclass(frozen=True)
class InitialTwin:
    """The twin a device gets when DPS creates (or resets) it in a hub."""

    desired: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {"desired": dict(self.desired), "tags": dict(self.tags)}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> InitialTwin:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(desired=dict(rec.get("desired") or {}), tags=dict(rec.get("tags") or {}))


@dataclass(frozen=True)
class EnrollmentGroup:
    """A DPS enrollment group: every device whose chain holds ``signing_cert_pem``."""

    group_id: str
    signing_cert_pem: str
    allocation: AllocationPolicy = AllocationPolicy.HASHED
    #: Linked hub names; empty means every hub devcloud runs.
    iot_hubs: tuple[str, ...] = ()
    webhook_url: str | None = None
    reprovision: ReprovisionPolicy = ReprovisionPolicy.MIGRATE
    initial_twin: InitialTwin = field(default_factory=InitialTwin)
    enabled: bool = True
    #: The credential policy whose issuing CA signs the CSRs of its devices, if any.
    credential_policy: str | None = None
    etag: str = ""
    created: str = ""
    updated: str = ""

    @property
    def thumbprint(self) -> str:
        """SHA-256 thumbprint of the signing certificate."""
        return thumbprint_of_pem(self.signing_cert_pem)

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {
            "groupId": self.group_id,
            "signingCertPem": self.signing_cert_pem,
            "allocation": self.allocation.value,
            "iotHubs": list(self.iot_hubs),
            "webhookUrl": self.webhook_url,
            "reprovision": self.reprovision.value,
            "initialTwin": self.initial_twin.to_record(),
            "enabled": self.enabled,
            "credentialPolicy": self.credential_policy,
            "etag": self.etag,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> EnrollmentGroup:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(
            group_id=rec["groupId"],
            signing_cert_pem=rec["signingCertPem"],
            allocation=AllocationPolicy(rec["allocation"]),
            iot_hubs=tuple(rec["iotHubs"]),
            webhook_url=rec.get("webhookUrl"),
            reprovision=ReprovisionPolicy(rec["reprovision"]),
            initial_twin=InitialTwin.from_record(rec.get("initialTwin") or {}),
            enabled=bool(rec["enabled"]),
            credential_policy=rec.get("credentialPolicy"),
            etag=rec.get("etag", ""),
            created=rec.get("created", ""),
            updated=rec.get("updated", ""),
        )


@dataclass(frozen=True)
class IndividualEnrollment:
    """A DPS individual enrollment for one registration id.

    ``thumbprints`` lists the leaf certificates accepted for it (upper-case SHA-256 hex);
    empty accepts any certificate that TLS verified and whose CN is the registration id.
    """

    registration_id: str
    thumbprints: tuple[str, ...] = ()
    device_id: str | None = None
    allocation: AllocationPolicy = AllocationPolicy.HASHED
    iot_hubs: tuple[str, ...] = ()
    webhook_url: str | None = None
    reprovision: ReprovisionPolicy = ReprovisionPolicy.MIGRATE
    initial_twin: InitialTwin = field(default_factory=InitialTwin)
    enabled: bool = True
    #: The credential policy whose issuing CA signs the CSRs of its devices, if any.
    credential_policy: str | None = None
    etag: str = ""
    created: str = ""
    updated: str = ""

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {
            "registrationId": self.registration_id,
            "thumbprints": list(self.thumbprints),
            "deviceId": self.device_id,
            "allocation": self.allocation.value,
            "iotHubs": list(self.iot_hubs),
            "webhookUrl": self.webhook_url,
            "reprovision": self.reprovision.value,
            "initialTwin": self.initial_twin.to_record(),
            "enabled": self.enabled,
            "credentialPolicy": self.credential_policy,
            "etag": self.etag,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> IndividualEnrollment:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(
            registration_id=rec["registrationId"],
            thumbprints=tuple(rec["thumbprints"]),
            device_id=rec.get("deviceId"),
            allocation=AllocationPolicy(rec["allocation"]),
            iot_hubs=tuple(rec["iotHubs"]),
            webhook_url=rec.get("webhookUrl"),
            reprovision=ReprovisionPolicy(rec["reprovision"]),
            initial_twin=InitialTwin.from_record(rec.get("initialTwin") or {}),
            enabled=bool(rec["enabled"]),
            credential_policy=rec.get("credentialPolicy"),
            etag=rec.get("etag", ""),
            created=rec.get("created", ""),
            updated=rec.get("updated", ""),
        )


Enrollment = EnrollmentGroup | IndividualEnrollment


@dataclass(frozen=True)
class Device:
    """A device identity in one hub (authentication: certificateAuthority)."""

    hub: str
    device_id: str
    enabled: bool = True
    etag: str = ""
    generation_id: str = ""
    created: str = ""
    updated: str = ""
    #: The DPS registration that created it, if any.
    registration_id: str | None = None
    #: The Plug and Play model it announced (hub CONNECT ``model-id``, else DPS ``modelId``).
    model_id: str | None = None

    @property
    def status(self) -> str:
        """``"enabled"`` or ``"disabled"``, as Azure names it."""
        return "enabled" if self.enabled else "disabled"

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {
            "hub": self.hub,
            "deviceId": self.device_id,
            "enabled": self.enabled,
            "etag": self.etag,
            "generationId": self.generation_id,
            "created": self.created,
            "updated": self.updated,
            "registrationId": self.registration_id,
            "modelId": self.model_id,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Device:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(
            hub=rec["hub"],
            device_id=rec["deviceId"],
            enabled=bool(rec["enabled"]),
            etag=rec.get("etag", ""),
            generation_id=rec.get("generationId", ""),
            created=rec.get("created", ""),
            updated=rec.get("updated", ""),
            registration_id=rec.get("registrationId"),
            model_id=rec.get("modelId"),
        )


@dataclass(frozen=True)
class Twin:
    """A device twin: desired and reported properties, each with its own version."""

    desired: Mapping[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported: Mapping[str, Any] = field(default_factory=dict)
    reported_version: int = 1
    tags: Mapping[str, Any] = field(default_factory=dict)

    def device_view(self) -> JsonObject:
        """The body of a twin GET over MQTT: ``{"desired": {..., "$version"}, "reported": ...}``."""
        return {
            "desired": {**copy.deepcopy(dict(self.desired)), "$version": self.desired_version},
            "reported": {**copy.deepcopy(dict(self.reported)), "$version": self.reported_version},
        }

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {
            "desired": dict(self.desired),
            "desiredVersion": self.desired_version,
            "reported": dict(self.reported),
            "reportedVersion": self.reported_version,
            "tags": dict(self.tags),
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Twin:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(
            desired=dict(rec["desired"]),
            desired_version=int(rec["desiredVersion"]),
            reported=dict(rec["reported"]),
            reported_version=int(rec["reportedVersion"]),
            tags=dict(rec.get("tags") or {}),
        )

    @classmethod
    def initial(cls, initial: InitialTwin) -> Twin:
        """The twin of a freshly created device."""
        return cls(desired=copy.deepcopy(dict(initial.desired)), tags=dict(initial.tags))


@dataclass(frozen=True)
class Registration:
    """DPS's registration state for one registration id (the last assignment)."""

    registration_id: str
    device_id: str
    assigned_hub: str
    status: str
    substatus: str
    created: str
    updated: str
    etag: str
    #: ``"group:{id}"`` or ``"individual:{id}"``.
    enrollment: str
    payload: Any = None

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {
            "registrationId": self.registration_id,
            "deviceId": self.device_id,
            "assignedHub": self.assigned_hub,
            "status": self.status,
            "substatus": self.substatus,
            "created": self.created,
            "updated": self.updated,
            "etag": self.etag,
            "enrollment": self.enrollment,
            "payload": self.payload,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Registration:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(
            registration_id=rec["registrationId"],
            device_id=rec["deviceId"],
            assigned_hub=rec["assignedHub"],
            status=rec["status"],
            substatus=rec["substatus"],
            created=rec["created"],
            updated=rec["updated"],
            etag=rec["etag"],
            enrollment=rec["enrollment"],
            payload=rec.get("payload"),
        )


#: Bounds of a credential policy's leaf validity (Azure's docs say 7-90 days today).
MIN_VALIDITY_DAYS = 1
MAX_VALIDITY_DAYS = 90


@dataclass(frozen=True)
class CredentialPolicy:
    """An Azure Device Registry credential policy: an issuing CA and a leaf validity."""

    name: str
    validity_days: int = 30
    etag: str = ""
    created: str = ""
    updated: str = ""

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {
            "name": self.name,
            "validityDays": self.validity_days,
            "etag": self.etag,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> CredentialPolicy:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(
            name=rec["name"],
            validity_days=int(rec["validityDays"]),
            etag=rec.get("etag", ""),
            created=rec.get("created", ""),
            updated=rec.get("updated", ""),
        )


class IssuedVia(StrEnum):
    """Which endpoint signed a certificate."""

    DPS = "dps"
    HUB = "hub"


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate devcloud signed from a device's CSR."""

    thumbprint: str
    serial: str
    registration_id: str
    device_id: str
    hub: str
    policy: str
    not_before: str
    not_after: str
    via: IssuedVia
    issued: str
    #: The hub refuses this certificate at CONNECT (a test asked for a failed renewal).
    refused: bool = False

    def to_record(self) -> JsonObject:
        """This record as the JSON object the store keeps."""
        return {
            "thumbprint": self.thumbprint,
            "serial": self.serial,
            "registrationId": self.registration_id,
            "deviceId": self.device_id,
            "hub": self.hub,
            "policy": self.policy,
            "notBefore": self.not_before,
            "notAfter": self.not_after,
            "via": self.via.value,
            "issued": self.issued,
            "refused": self.refused,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> IssuedCertificate:
        """Rebuild from what :meth:`to_record` made (as loaded from the store)."""
        return cls(
            thumbprint=rec["thumbprint"],
            serial=rec["serial"],
            registration_id=rec["registrationId"],
            device_id=rec["deviceId"],
            hub=rec["hub"],
            policy=rec["policy"],
            not_before=rec["notBefore"],
            not_after=rec["notAfter"],
            via=IssuedVia(rec["via"]),
            issued=rec["issued"],
            refused=bool(rec.get("refused", False)),
        )


class RefusalMode(StrEnum):
    """How the hub refuses a device's renewals (a test's fault injection)."""

    #: Answer issueCertificate with an error (after the 202).
    ERROR = "error"
    #: Issue the certificate, then refuse CONNECT with it (CONNACK 5).
    CONNECT = "connect"


@dataclass(frozen=True)
class RenewalRefusal:
    """The hub refuses this device's certificate renewals until told otherwise."""

    mode: RefusalMode = RefusalMode.ERROR
    #: The ``errorCode`` answered in ``error`` mode (400040 CredentialOperationFailed).
    error_code: int = 400040


@dataclass(frozen=True)
class TelemetryMessage:
    """One device-to-cloud message as the hub stored it."""

    sequence_number: int
    hub: str
    device_id: str
    enqueued_time: str
    body: bytes
    #: Application properties from the topic's property bag.
    properties: Mapping[str, str]
    #: System properties (``$.ct``, ``$.ce``, ``$.mid``, ``$.cid``, ...), keys as on the wire.
    system_properties: Mapping[str, str]
