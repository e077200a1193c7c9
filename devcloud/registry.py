"""The registry: DPS enrollments and registrations, and every hub's devices and twins.

Theory of operation. The registry is the single owner of devcloud's state. It keeps all
records in memory (dicts of frozen dataclasses) and writes each change through to a
:class:`~devcloud.store.Store` (memory or SQLite); on construction it loads them back.
It does no I/O towards devices: when a change matters to a live connection (a device
disabled or deleted, a desired-property patch) it emits a :data:`RegistryEvent` to its
listeners, and each hub endpoint reacts (closes the connection, pushes the patch).
Every method runs on devcloud's event loop thread; nothing here blocks beyond a SQLite
write.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from devcloud.errors import ConflictError, InvalidRequestError, NotFoundError
from devcloud.model import (
    MAX_VALIDITY_DAYS,
    MIN_VALIDITY_DAYS,
    CredentialPolicy,
    Device,
    EnrollmentGroup,
    IndividualEnrollment,
    IssuedCertificate,
    Registration,
    RenewalRefusal,
    Twin,
    merge_patch,
    new_etag,
    utc_iso,
)
from devcloud.store import MemoryStore, Store


@dataclass(frozen=True)
class DeviceChanged:
    """A device was created, enabled, disabled or (``device is None``) deleted."""

    hub: str
    device_id: str
    device: Device | None


@dataclass(frozen=True)
class DesiredPatched:
    """The service side patched a device's desired properties."""

    hub: str
    device_id: str
    #: The patch as the device receives it, ``$version`` included.
    patch: Mapping[str, Any]
    version: int


RegistryEvent = DeviceChanged | DesiredPatched
Listener = Callable[[RegistryEvent], None]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _key(hub: str, device_id: str) -> str:
    return f"{hub}/{device_id}"


def _check_id(kind: str, value: str) -> str:
    # Azure ids: up to 128 chars of ASCII letters, digits and - . _ :
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:")
    if not value or len(value) > 128 or not set(value) <= allowed:
        raise InvalidRequestError(f"invalid {kind} {value!r}: 1-128 of [A-Za-z0-9-._:]")
    return value


class _ObservedStore:
    """A store that calls ``on_write`` after every put or delete (each one is a change)."""

    def __init__(self, store: Store, on_write: Callable[[], None]) -> None:
        self._store = store
        self._on_write = on_write

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        return self._store.load(kind)

    def put(self, kind: str, key: str, record: Mapping[str, Any]) -> None:
        self._store.put(kind, key, record)
        self._on_write()

    def delete(self, kind: str, key: str) -> None:
        self._store.delete(kind, key)
        self._on_write()

    def close(self) -> None:
        self._store.close()


class Registry:
    """All of devcloud's records, kept in memory and written through to ``store``."""

    def __init__(
        self,
        hub_names: Sequence[str],
        store: Store | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.hub_names = tuple(hub_names)
        #: Called after every write (the app points it at the console's change feed).
        self.on_change: Callable[[], None] = lambda: None
        self._store: Store = _ObservedStore(
            store if store is not None else MemoryStore(), self._changed
        )
        self._clock = clock
        self._listeners: list[Listener] = []
        self._groups = {
            k: EnrollmentGroup.from_record(v) for k, v in self._store.load("group").items()
        }
        self._enrollments = {
            k: IndividualEnrollment.from_record(v)
            for k, v in self._store.load("enrollment").items()
        }
        self._devices = {k: Device.from_record(v) for k, v in self._store.load("device").items()}
        self._twins = {k: Twin.from_record(v) for k, v in self._store.load("twin").items()}
        self._registrations = {
            k: Registration.from_record(v) for k, v in self._store.load("registration").items()
        }
        self._stats: dict[str, dict[str, int]] = {
            k: {"attempts": int(v["attempts"]), "assignments": int(v["assignments"])}
            for k, v in self._store.load("stats").items()
        }
        self._policies = {
            k: CredentialPolicy.from_record(v) for k, v in self._store.load("policy").items()
        }
        self._issued = {
            k: IssuedCertificate.from_record(v) for k, v in self._store.load("issued").items()
        }
        #: Fault injection for tests (not persisted): (hub, device id) -> refusal.
        self._refusals: dict[str, RenewalRefusal] = {}
        #: Bumped whenever the set of trusted CAs may have changed (groups, policies).
        self.trust_generation = 0

    # -- plumbing ---------------------------------------------------------------------------

    def now(self) -> str:
        """The current time in Azure's format."""
        return utc_iso(self._clock())

    def current_time(self) -> datetime:
        """The current time (timezone-aware), from the registry's clock."""
        return self._clock()

    def _changed(self) -> None:
        self.on_change()  # looked up at each write: the app sets on_change after __init__

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every :data:`RegistryEvent` from now on."""
        self._listeners.append(listener)

    def _emit(self, event: RegistryEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    def close(self) -> None:
        """Close the store."""
        self._store.close()

    def check_hubs(self, hubs: Iterable[str]) -> tuple[str, ...]:
        """Validate hub names; raise :class:`InvalidRequestError` for an unknown one."""
        out = tuple(hubs)
        unknown = [h for h in out if h not in self.hub_names]
        if unknown:
            raise InvalidRequestError(f"unknown hub(s) {unknown}; hubs are {list(self.hub_names)}")
        return out

    # -- enrollment groups ------------------------------------------------------------------

    def put_group(self, group: EnrollmentGroup) -> EnrollmentGroup:
        """Create or replace an enrollment group; stamps etag and times."""
        _check_id("enrollment group id", group.group_id)
        self.check_hubs(group.iot_hubs)
        self._check_policy_reference(group.credential_policy)
        _ = group.thumbprint  # validates the PEM
        now = self.now()
        old = self._groups.get(group.group_id)
        group = replace(
            group,
            created=old.created if old else now,
            updated=now,
            etag=new_etag(group.to_record(), now, secrets.token_hex(4)),
        )
        self._groups[group.group_id] = group
        self._store.put("group", group.group_id, group.to_record())
        self.trust_generation += 1
        return group

    def get_group(self, group_id: str) -> EnrollmentGroup:
        """The group, or :class:`NotFoundError`."""
        try:
            return self._groups[group_id]
        except KeyError:
            raise NotFoundError(f"enrollment group {group_id!r} not found") from None

    def groups(self) -> list[EnrollmentGroup]:
        """Every group, sorted by id."""
        return [self._groups[k] for k in sorted(self._groups)]

    def delete_group(self, group_id: str) -> None:
        """Delete the group, or :class:`NotFoundError`."""
        self.get_group(group_id)
        del self._groups[group_id]
        self._store.delete("group", group_id)
        self.trust_generation += 1

    # -- individual enrollments -------------------------------------------------------------

    def put_enrollment(self, enrollment: IndividualEnrollment) -> IndividualEnrollment:
        """Create or replace an individual enrollment; stamps etag and times."""
        _check_id("registration id", enrollment.registration_id)
        if enrollment.device_id is not None:
            _check_id("device id", enrollment.device_id)
        self.check_hubs(enrollment.iot_hubs)
        self._check_policy_reference(enrollment.credential_policy)
        now = self.now()
        old = self._enrollments.get(enrollment.registration_id)
        enrollment = replace(
            enrollment,
            thumbprints=tuple(t.upper().replace(":", "") for t in enrollment.thumbprints),
            created=old.created if old else now,
            updated=now,
            etag=new_etag(enrollment.to_record(), now, secrets.token_hex(4)),
        )
        self._enrollments[enrollment.registration_id] = enrollment
        self._store.put("enrollment", enrollment.registration_id, enrollment.to_record())
        return enrollment

    def get_enrollment(self, registration_id: str) -> IndividualEnrollment:
        """The enrollment, or :class:`NotFoundError`."""
        try:
            return self._enrollments[registration_id]
        except KeyError:
            raise NotFoundError(f"enrollment {registration_id!r} not found") from None

    def enrollments(self) -> list[IndividualEnrollment]:
        """Every individual enrollment, sorted by registration id."""
        return [self._enrollments[k] for k in sorted(self._enrollments)]

    def delete_enrollment(self, registration_id: str) -> None:
        """Delete the enrollment, or :class:`NotFoundError`."""
        self.get_enrollment(registration_id)
        del self._enrollments[registration_id]
        self._store.delete("enrollment", registration_id)

    # -- devices ----------------------------------------------------------------------------

    def create_device(
        self,
        hub: str,
        device_id: str,
        *,
        twin: Twin | None = None,
        enabled: bool = True,
        registration_id: str | None = None,
        model_id: str | None = None,
    ) -> Device:
        """Create a device (and its twin) in ``hub``; :class:`ConflictError` if it exists."""
        self.check_hubs([hub])
        _check_id("device id", device_id)
        key = _key(hub, device_id)
        if key in self._devices:
            raise ConflictError(f"device {device_id!r} already exists in hub {hub!r}")
        now = self.now()
        device = Device(
            hub=hub,
            device_id=device_id,
            enabled=enabled,
            etag=new_etag(key, now, secrets.token_hex(4)),
            generation_id=secrets.token_hex(8),
            created=now,
            updated=now,
            registration_id=registration_id,
            model_id=model_id,
        )
        self._devices[key] = device
        self._store.put("device", key, device.to_record())
        self._set_twin(hub, device_id, twin if twin is not None else Twin())
        self._emit(DeviceChanged(hub, device_id, device))
        return device

    def get_device(self, hub: str, device_id: str) -> Device:
        """The device in ``hub``, or :class:`NotFoundError`."""
        try:
            return self._devices[_key(hub, device_id)]
        except KeyError:
            raise NotFoundError(f"device {device_id!r} not found in hub {hub!r}") from None

    def device(self, hub: str, device_id: str) -> Device | None:
        """The device in ``hub``, or None."""
        return self._devices.get(_key(hub, device_id))

    def find_device(self, device_id: str, hub: str | None = None) -> Device:
        """The device in ``hub``, or in whichever single hub holds it.

        :class:`NotFoundError` if none does, :class:`ConflictError` if several do.
        """
        if hub is not None:
            self.check_hubs([hub])
            return self.get_device(hub, device_id)
        found = [d for d in self._devices.values() if d.device_id == device_id]
        if not found:
            raise NotFoundError(f"device {device_id!r} not found in any hub")
        if len(found) > 1:
            hubs = sorted(d.hub for d in found)
            raise ConflictError(f"device {device_id!r} exists in hubs {hubs}; name the hub")
        return found[0]

    def devices(self, hub: str | None = None) -> list[Device]:
        """Every device (of ``hub`` if given), sorted by hub then id."""
        if hub is not None:
            self.check_hubs([hub])
        found = [d for d in self._devices.values() if hub is None or d.hub == hub]
        return sorted(found, key=lambda d: (d.hub, d.device_id))

    def set_device_enabled(self, hub: str, device_id: str, enabled: bool) -> Device:
        """Enable or disable a device; a disabled device's connection is closed by its hub."""
        device = self.get_device(hub, device_id)
        now = self.now()
        device = replace(
            device, enabled=enabled, updated=now, etag=new_etag(device.etag, enabled, now)
        )
        key = _key(hub, device_id)
        self._devices[key] = device
        self._store.put("device", key, device.to_record())
        self._emit(DeviceChanged(hub, device_id, device))
        return device

    def set_model_id(self, hub: str, device_id: str, model_id: str) -> Device:
        """Record the Plug and Play model id the device announced (written only if new)."""
        device = self.get_device(hub, device_id)
        if device.model_id == model_id:
            return device
        device = replace(device, model_id=model_id)
        key = _key(hub, device_id)
        self._devices[key] = device
        self._store.put("device", key, device.to_record())
        return device

    def delete_device(self, hub: str, device_id: str) -> None:
        """Delete a device and its twin; its hub closes a live connection."""
        self.get_device(hub, device_id)
        key = _key(hub, device_id)
        del self._devices[key]
        self._twins.pop(key, None)
        self._store.delete("device", key)
        self._store.delete("twin", key)
        self._emit(DeviceChanged(hub, device_id, None))

    # -- twins ------------------------------------------------------------------------------

    def get_twin(self, hub: str, device_id: str) -> Twin:
        """The device's twin, or :class:`NotFoundError` if the device does not exist."""
        self.get_device(hub, device_id)
        return self._twins.get(_key(hub, device_id), Twin())

    def _set_twin(self, hub: str, device_id: str, twin: Twin) -> None:
        key = _key(hub, device_id)
        self._twins[key] = twin
        self._store.put("twin", key, twin.to_record())

    def replace_twin(self, hub: str, device_id: str, twin: Twin) -> Twin:
        """Replace the whole twin (DPS migration or reset)."""
        self.get_device(hub, device_id)
        self._set_twin(hub, device_id, twin)
        return twin

    def patch_desired(
        self,
        hub: str,
        device_id: str,
        patch: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
    ) -> Twin:
        """Merge ``patch`` into the desired properties (and ``tags``), bump the version, push."""
        if not isinstance(patch, Mapping):
            raise InvalidRequestError("desired properties patch must be a JSON object")
        twin = self.get_twin(hub, device_id)
        new_tags = merge_patch(twin.tags, tags) if tags else dict(twin.tags)
        if not patch:
            twin = replace(twin, tags=new_tags)
            self._set_twin(hub, device_id, twin)
            return twin
        twin = replace(
            twin,
            desired=merge_patch(twin.desired, patch),
            desired_version=twin.desired_version + 1,
            tags=new_tags,
        )
        self._set_twin(hub, device_id, twin)
        pushed = {k: v for k, v in patch.items() if not k.startswith("$")}
        pushed["$version"] = twin.desired_version
        self._emit(DesiredPatched(hub, device_id, pushed, twin.desired_version))
        return twin

    def patch_reported(self, hub: str, device_id: str, patch: Mapping[str, Any]) -> Twin:
        """Merge a device's reported-properties patch and bump the reported version."""
        if not isinstance(patch, Mapping):
            raise InvalidRequestError("reported properties patch must be a JSON object")
        twin = self.get_twin(hub, device_id)
        twin = replace(
            twin,
            reported=merge_patch(twin.reported, patch),
            reported_version=twin.reported_version + 1,
        )
        self._set_twin(hub, device_id, twin)
        return twin

    # -- credential policies, issued certificates, renewal refusals ------------------------

    def _check_policy_reference(self, name: str | None) -> None:
        if name is not None and name not in self._policies:
            raise InvalidRequestError(
                f"unknown credential policy {name!r}; policies are {sorted(self._policies)}"
            )

    def put_policy(self, policy: CredentialPolicy) -> CredentialPolicy:
        """Create or replace a credential policy (validity 1-90 days)."""
        _check_id("credential policy name", policy.name)
        if not MIN_VALIDITY_DAYS <= policy.validity_days <= MAX_VALIDITY_DAYS:
            raise InvalidRequestError(
                f"validity must be {MIN_VALIDITY_DAYS}-{MAX_VALIDITY_DAYS} days, "
                f"not {policy.validity_days}"
            )
        now = self.now()
        old = self._policies.get(policy.name)
        policy = replace(
            policy,
            created=old.created if old else now,
            updated=now,
            etag=new_etag(policy.to_record(), now, secrets.token_hex(4)),
        )
        self._policies[policy.name] = policy
        self._store.put("policy", policy.name, policy.to_record())
        self.trust_generation += 1
        return policy

    def get_policy(self, name: str) -> CredentialPolicy:
        """The credential policy, or :class:`NotFoundError`."""
        try:
            return self._policies[name]
        except KeyError:
            raise NotFoundError(f"credential policy {name!r} not found") from None

    def policies(self) -> list[CredentialPolicy]:
        """Every credential policy, sorted by name."""
        return [self._policies[k] for k in sorted(self._policies)]

    def delete_policy(self, name: str) -> None:
        """Delete a policy no enrollment names (else :class:`ConflictError`).

        Certificates it issued stay valid, as in Azure: its CA stays trusted.
        """
        self.get_policy(name)
        users = [g.group_id for g in self._groups.values() if g.credential_policy == name]
        users += [
            e.registration_id for e in self._enrollments.values() if e.credential_policy == name
        ]
        if users:
            raise ConflictError(f"credential policy {name!r} is used by enrollments {users}")
        del self._policies[name]
        self._store.delete("policy", name)

    def enrollment_policy(self, enrollment: str) -> CredentialPolicy | None:
        """The policy of a registration's enrollment (``"group:ID"``/``"individual:ID"``)."""
        kind, _, key = enrollment.partition(":")
        record: EnrollmentGroup | IndividualEnrollment | None
        record = self._groups.get(key) if kind == "group" else self._enrollments.get(key)
        if record is None or record.credential_policy is None:
            return None
        return self._policies.get(record.credential_policy)

    def device_policy(self, hub: str, device_id: str) -> CredentialPolicy | None:
        """The credential policy that renews this device's certificate, if any.

        That is the policy of the enrollment that last assigned it through DPS.
        """
        device = self.device(hub, device_id)
        if device is None or device.registration_id is None:
            return None
        registration = self._registrations.get(device.registration_id)
        if registration is None or registration.assigned_hub != hub:
            return None
        return self.enrollment_policy(registration.enrollment)

    def record_issued(self, issued: IssuedCertificate) -> None:
        """Remember a certificate devcloud signed."""
        self._issued[issued.thumbprint] = issued
        self._store.put("issued", issued.thumbprint, issued.to_record())

    def issued_certificates(
        self, *, device_id: str | None = None, registration_id: str | None = None
    ) -> list[IssuedCertificate]:
        """Certificates devcloud signed (optionally for one device), oldest first."""
        found = [
            c
            for c in self._issued.values()
            if (device_id is None or c.device_id == device_id)
            and (registration_id is None or c.registration_id == registration_id)
        ]
        return sorted(found, key=lambda c: (c.issued, c.thumbprint))

    def certificate_refused(self, thumbprint: str) -> bool:
        """Whether the hubs refuse this issued certificate at CONNECT."""
        found = self._issued.get(thumbprint)
        return found is not None and found.refused

    def set_renewal_refusal(self, hub: str, device_id: str, refusal: RenewalRefusal | None) -> None:
        """Make the hub refuse (or, with None, accept again) this device's renewals."""
        self.get_device(hub, device_id)
        if refusal is None:
            self._refusals.pop(_key(hub, device_id), None)
        else:
            self._refusals[_key(hub, device_id)] = refusal

    def renewal_refusal(self, hub: str, device_id: str) -> RenewalRefusal | None:
        """The refusal set for this device, if any."""
        return self._refusals.get(_key(hub, device_id))

    # -- registrations and DPS statistics ---------------------------------------------------

    def registration(self, registration_id: str) -> Registration | None:
        """The registration state, or None if DPS never assigned this registration id."""
        return self._registrations.get(registration_id)

    def get_registration(self, registration_id: str) -> Registration:
        """The registration state, or :class:`NotFoundError`."""
        found = self.registration(registration_id)
        if found is None:
            raise NotFoundError(f"registration {registration_id!r} not found")
        return found

    def registrations(self) -> list[Registration]:
        """Every registration state, sorted by registration id."""
        return [self._registrations[k] for k in sorted(self._registrations)]

    def put_registration(self, registration: Registration) -> None:
        """Record an assignment."""
        self._registrations[registration.registration_id] = registration
        self._store.put("registration", registration.registration_id, registration.to_record())

    def delete_registration(self, registration_id: str) -> None:
        """Forget a registration state (the device's hub identity stays)."""
        self.get_registration(registration_id)
        del self._registrations[registration_id]
        self._store.delete("registration", registration_id)

    def count_attempt(self, registration_id: str) -> None:
        """Count one register request received by DPS for ``registration_id``."""
        self._bump_stat(registration_id, "attempts")

    def count_assignment(self, registration_id: str) -> None:
        """Count one completed assignment for ``registration_id``."""
        self._bump_stat(registration_id, "assignments")

    def _bump_stat(self, registration_id: str, name: str) -> None:
        entry = self._stats.setdefault(registration_id, {"attempts": 0, "assignments": 0})
        entry[name] += 1
        self._store.put("stats", registration_id, entry)

    def stats(self) -> dict[str, dict[str, int]]:
        """Register requests and assignments per registration id."""
        return {k: dict(v) for k, v in sorted(self._stats.items())}
