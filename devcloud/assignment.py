"""What DPS does once a registration is accepted: pick a hub, create or move the device.

Theory of operation. :meth:`Assigner.assign` looks up the registration id's previous
assignment (if any) and applies the enrollment's reprovision policy:

=====================  =========================  ===================================
policy                 hub                        twin in the target hub
=====================  =========================  ===================================
first registration     allocation policy          enrollment's (or custom) initial twin
migratedata (default)  allocation policy          carried over from the old hub
resetdata              allocation policy          reset to the initial twin
neverreprovision       stays on the current hub   kept
=====================  =========================  ===================================

Substatus: ``initialAssignment`` for a first registration (or when the old device is
gone), ``deviceDataMigrated`` when migrate moved it, ``deviceDataReset`` for reset,
``reprovisionedToInitialAssignment`` for never-reprovision. The device is created in the
target hub (certificateAuthority, enabled); when it moves, it is deleted from the old hub
(which closes its live connection there). A device that already exists in the target hub
keeps its enabled/disabled status: DPS never re-enables what an operator disabled. The
device records the ``modelId`` of the registration payload (IoT Plug and Play), if any.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509

from devcloud.allocation import AllocationRequest, CustomAllocator, allocate
from devcloud.enrollment_match import thumbprint
from devcloud.model import (
    Enrollment,
    IndividualEnrollment,
    InitialTwin,
    Registration,
    ReprovisionPolicy,
    Twin,
    new_etag,
)
from devcloud.registry import Registry
from devcloud.render import HubNames, parse_initial_twin, render_enrollment, render_group


def x509_context(chain: Sequence[x509.Certificate]) -> dict[str, Any]:
    """The ``deviceRuntimeContext.x509`` Azure gives a custom allocator."""
    if not chain:
        return {}
    leaf = chain[0]
    return {
        "subjectName": leaf.subject.rfc4514_string(),
        "issuerName": leaf.issuer.rfc4514_string(),
        "sha256Thumbprint": thumbprint(leaf),
        "serialNumber": format(leaf.serial_number, "X"),
        "notBeforeUtc": leaf.not_valid_before_utc.isoformat(),
        "notAfterUtc": leaf.not_valid_after_utc.isoformat(),
    }


def model_id_of(payload: Any) -> str | None:
    """The Plug and Play model id a device sent in its DPS payload (``modelId``), if any."""
    if isinstance(payload, dict):
        model_id = payload.get("modelId")
        if isinstance(model_id, str) and model_id:
            return model_id
    return None


class Assigner:
    """Runs allocation and applies the reprovision policy to the registry."""

    def __init__(self, registry: Registry, hubs: HubNames) -> None:
        self.registry = registry
        self.hubs = hubs
        #: The Python callable used for ``custom`` allocation without a webhook URL.
        self.custom_allocator: CustomAllocator | None = None

    async def assign(
        self,
        registration_id: str,
        enrollment: Enrollment,
        payload: Any,
        chain: Sequence[x509.Certificate],
    ) -> Registration:
        """Assign ``registration_id``; raises :class:`~devcloud.errors.AllocationError`."""
        registry = self.registry
        individual = isinstance(enrollment, IndividualEnrollment)
        device_id = registration_id
        if isinstance(enrollment, IndividualEnrollment) and enrollment.device_id:
            device_id = enrollment.device_id
        linked = enrollment.iot_hubs or registry.hub_names
        previous = registry.registration(registration_id)
        current = previous.assigned_hub if previous else None
        policy = enrollment.reprovision
        initial: InitialTwin = enrollment.initial_twin
        result_payload: Any = None
        if (
            current is not None
            and current in registry.hub_names
            and (policy is ReprovisionPolicy.NEVER)
        ):
            target = current
        else:
            request = AllocationRequest(
                registration_id=registration_id,
                payload=payload,
                linked_hubs=tuple(self.hubs.hostname(h) for h in linked),
                current_hub=self.hubs.hostname(current)
                if current in registry.hub_names and current is not None
                else None,
                enrollment_kind="individualEnrollment" if individual else "enrollmentGroup",
                enrollment=render_enrollment(enrollment)
                if isinstance(enrollment, IndividualEnrollment)
                else render_group(enrollment),
                x509=x509_context(chain),
            )
            result = await allocate(
                enrollment.allocation,
                request,
                custom=self.custom_allocator,
                webhook_url=enrollment.webhook_url,
            )
            target = self.hubs.name(result.iot_hub_host_name)
            if result.initial_twin is not None:
                initial = parse_initial_twin(result.initial_twin)
            result_payload = result.payload
        # Re-read: another assignment may have completed while allocation awaited.
        previous = registry.registration(registration_id)
        old = (
            registry.device(previous.assigned_hub, previous.device_id)
            if previous is not None and previous.assigned_hub in registry.hub_names
            else None
        )
        if old is None:
            substatus, twin = "initialAssignment", Twin.initial(initial)
        elif policy is ReprovisionPolicy.NEVER:
            substatus = "reprovisionedToInitialAssignment"
            twin = registry.get_twin(old.hub, old.device_id)
        elif policy is ReprovisionPolicy.RESET:
            substatus, twin = "deviceDataReset", Twin.initial(initial)
        else:
            moved = (old.hub, old.device_id) != (target, device_id)
            substatus = "deviceDataMigrated" if moved else "initialAssignment"
            twin = registry.get_twin(old.hub, old.device_id)
        moved = old is not None and (old.hub, old.device_id) != (target, device_id)
        if old is not None and moved:
            registry.delete_device(old.hub, old.device_id)
        model_id = model_id_of(payload)
        if registry.device(target, device_id) is None:
            registry.create_device(
                target, device_id, twin=twin, registration_id=registration_id, model_id=model_id
            )
        else:
            if moved or (old is not None and policy is ReprovisionPolicy.RESET):
                registry.replace_twin(target, device_id, twin)
            if model_id is not None:
                registry.set_model_id(target, device_id, model_id)
        now = registry.now()
        registration = Registration(
            registration_id=registration_id,
            device_id=device_id,
            assigned_hub=target,
            status="assigned",
            substatus=substatus,
            created=previous.created if previous else now,
            updated=now,
            etag=new_etag(registration_id, target, now),
            enrollment=("individual:" if individual else "group:")
            + (
                enrollment.registration_id
                if isinstance(enrollment, IndividualEnrollment)
                else enrollment.group_id
            ),
            payload=result_payload,
        )
        registry.put_registration(registration)
        return registration
