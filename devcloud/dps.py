"""The DPS endpoint: Azure Device Provisioning Service over MQTT, one registration at a time.

Theory of operation. :class:`DpsEndpoint` implements the server's
:class:`~devcloud.mqtt.endpoint.Endpoint`: CONNECT is accepted when the username is
``{idScope}/registrations/{clientId}/api-version=...`` for devcloud's id scope and the TLS
leaf's CN is the client id (else CONNACK 5; a malformed username gets 4). Each accepted
connection gets a :class:`DpsSession`, which allows one subscription,
``$dps/registrations/res/#``, and two requests:

* ``$dps/registrations/PUT/iotdps-register/?$rid=R`` with ``{"registrationId", "payload"}``:
  checked in this order — JSON and registration id (400), throttling (429 with
  ``retry-after``), a revoked leaf (401; see :mod:`devcloud.tls`), enrollment (404
  unknown / 401 disabled, see :mod:`devcloud.enrollment_match`), then an optional
  ``csr`` (certificate issuance, below; 400) — then answered
  ``202 {"operationId", "status": "assigning"}`` while an assignment task runs in the
  background;
* ``$dps/registrations/GET/iotdps-get-operationstatus/?$rid=R&operationId=O``: 202
  ``assigning`` until the task is done (it first waits the configured assignment delay),
  then 200 with ``status`` ``assigned`` + ``registrationState``, or ``failed`` with
  ``errorCode`` / ``errorMessage``; an unknown operation is 404.

Every answer goes to ``$dps/registrations/res/{status}/?$rid=R[&retry-after=N]`` on the
asking connection only; errors carry ``{"errorCode", "message", "trackingId",
"timestampUtc"}``. Any other topic is a protocol violation (the connection is closed).

The assignment itself lives in :mod:`devcloud.assignment` (allocation policy, reprovision
policy, creating/moving the device in the hubs).

Certificate issuance (Azure Device Registry, preview): a register request may carry
``"csr"`` (base64 DER PKCS#10, CN = registration id) when the connection's username says
``api-version=2025-07-01-preview`` and the matched enrollment names a credential policy;
otherwise, or for a bad CSR, the answer is 400 (errorCode 400004). The CSR is checked
before the 202 (:mod:`devcloud.issuance`); once the assignment succeeds the policy's CA
signs it, and the assigned ``registrationState`` carries ``issuedCertificateChain``
(base64 DER: leaf, issuing CA, root). The hubs trust that CA.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509

from devcloud.activity import DpsHistory
from devcloud.assignment import Assigner
from devcloud.enrollment_match import RevocationCheck, leaf_accepted, match_enrollment
from devcloud.errors import (
    DevCloudError,
    InvalidRequestError,
    NotFoundError,
    ThrottledError,
    UnauthorizedError,
)
from devcloud.issuance import ISSUANCE_API_VERSION, Issuer, b64_der, check_csr, decode_csr
from devcloud.model import (
    CredentialPolicy,
    Enrollment,
    IssuedVia,
    JsonObject,
    RefusalMode,
    Registration,
)
from devcloud.mqtt.endpoint import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_USERNAME_OR_PASSWORD,
    CONNACK_NOT_AUTHORIZED,
    Connection,
    ConnectRequest,
    DeviceSession,
    ProtocolViolation,
)
from devcloud.registry import Registry

RESPONSE_FILTER = "$dps/registrations/res/#"
REGISTER_PREFIX = "$dps/registrations/PUT/iotdps-register/"
POLL_PREFIX = "$dps/registrations/GET/iotdps-get-operationstatus/"
MAX_OPERATIONS = 10_000


class RateLimiter:
    """``rate_per_s`` registrations a second, bursts up to ``max(1, rate)``.

    By default a token bucket: a refused request is told to retry after the whole seconds
    until the next token, so every device refused in the same instant hears the same
    time. With ``reserve_slots`` a refused request (keyed by registration id) books the
    next free slot of the schedule instead, and its retry-after points at that slot: a
    device that honours it is admitted when it comes back, one that comes back early is
    refused again with the time left, so a fleet that honours retry-after sends at most
    two register requests per device.
    """

    #: A booked slot is forgotten this long after its time (the device never came back).
    SLOT_EXPIRY_S = 120.0

    def __init__(
        self,
        rate_per_s: float | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        reserve_slots: bool = False,
    ):
        self.rate_per_s = rate_per_s
        self._clock = clock
        self._capacity = max(1.0, rate_per_s or 1.0)
        self._tokens = self._capacity
        self._stamp = clock()
        self.reserve_slots = reserve_slots
        self._next_slot = self._stamp  # the schedule's next free slot (reserve_slots)
        self._booked: OrderedDict[str, float] = OrderedDict()

    def acquire(self, key: str = "") -> int | None:
        """Take a token: None if allowed, else the whole seconds to wait (at least 1)."""
        if self.rate_per_s is None:
            return None
        if self.reserve_slots:
            return self._acquire_slot(key, self.rate_per_s)
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - self._tokens) / self.rate_per_s))

    def _acquire_slot(self, key: str, rate_per_s: float) -> int | None:
        now = self._clock()
        while self._booked and next(iter(self._booked.values())) < now - self.SLOT_EXPIRY_S:
            self._booked.popitem(last=False)
        booked = self._booked.get(key)
        if booked is not None:
            if now >= booked - 0.05:
                del self._booked[key]
                return None
            return max(1, math.ceil(booked - now))
        # The schedule may lag ``now`` by the burst allowance, never more.
        slot = max(self._next_slot, now - (self._capacity - 1.0) / rate_per_s)
        self._next_slot = slot + 1.0 / rate_per_s
        if slot <= now:
            return None
        self._booked[key] = slot
        return max(1, math.ceil(slot - now))


@dataclass(frozen=True)
class Operation:
    """One register request's progress."""

    operation_id: str
    registration_id: str
    status: str  # "assigning" | "assigned" | "failed"
    registration: Registration | None = None
    error: DevCloudError | None = None
    #: ``issuedCertificateChain`` of an assignment that issued a certificate.
    issued_chain: tuple[str, ...] = ()


@dataclass(frozen=True)
class IssueRequest:
    """A checked CSR and the policy that will sign it once the device is assigned."""

    csr: x509.CertificateSigningRequest
    policy: CredentialPolicy


def _query(topic: str) -> dict[str, str]:
    _, _, query = topic.partition("?")
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


class Provisioner:
    """DPS's service logic, shared by every DPS connection."""

    def __init__(
        self,
        registry: Registry,
        assigner: Assigner,
        *,
        id_scope: str,
        assignment_delay_s: float = 0.2,
        registrations_per_second: float | None = None,
        throttle_reserves_slots: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        is_revoked: RevocationCheck | None = None,
        issuer: Issuer | None = None,
        history: DpsHistory | None = None,
    ) -> None:
        self.registry = registry
        #: What happened to each registration id's requests (the console shows it).
        self.history = history if history is not None else DpsHistory(registry.now)
        self.is_revoked = is_revoked
        self.issuer = issuer
        self.assigner = assigner
        self.id_scope = id_scope
        self.assignment_delay_s = assignment_delay_s
        self.limiter = RateLimiter(
            registrations_per_second, monotonic, reserve_slots=throttle_reserves_slots
        )
        self._rng = rng if rng is not None else random.Random()
        self._operations: OrderedDict[str, Operation] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def retry_after_s(self) -> int:
        """The polling interval suggested with a 202 (whole seconds, at least 1)."""
        return max(1, math.ceil(self.assignment_delay_s))

    def tracking_id(self) -> str:
        """A fresh tracking id for an error body."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def begin(
        self, registration_id: str, body: bytes, chain: Sequence[x509.Certificate]
    ) -> Operation:
        """Validate a register request and start its assignment; raises the DPS error."""
        self.registry.count_attempt(registration_id)
        try:
            request = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequestError("the register request body is not JSON") from None
        if not isinstance(request, dict):
            raise InvalidRequestError("the register request body must be a JSON object")
        if request.get("registrationId") != registration_id:
            raise InvalidRequestError(
                "registrationId in the body differs from the connection's registration id"
            )
        wait_s = self.limiter.acquire(registration_id)
        if wait_s is not None:
            raise ThrottledError("registrations are being throttled", retry_after_s=wait_s)
        if chain and self.is_revoked is not None and self.is_revoked(chain[0]):
            raise UnauthorizedError("the device certificate is revoked")
        enrollment = match_enrollment(
            registration_id, chain, self.registry.enrollments(), self.registry.groups()
        )
        issue = self._issue_request(registration_id, request, enrollment)
        operation = Operation(
            operation_id=f"4.{self._rng.getrandbits(64):016x}.{self.tracking_id()}",
            registration_id=registration_id,
            status="assigning",
        )
        self._remember(operation)
        self.history.record(registration_id, "accepted", 202, operationId=operation.operation_id)
        task = asyncio.get_running_loop().create_task(
            self._assign(operation, enrollment, request.get("payload"), list(chain), issue)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return operation

    def _issue_request(
        self, registration_id: str, request: dict[str, Any], enrollment: Enrollment
    ) -> IssueRequest | None:
        if "csr" not in request:
            return None
        name = enrollment.credential_policy
        if name is None or self.issuer is None:
            raise InvalidRequestError(
                "the enrollment names no credential policy: DPS cannot issue a certificate"
            )
        policy = self.registry.get_policy(name)
        csr = check_csr(decode_csr(request["csr"]), registration_id)
        return IssueRequest(csr, policy)

    def _remember(self, operation: Operation) -> None:
        self._operations[operation.operation_id] = operation
        self._operations.move_to_end(operation.operation_id)
        while len(self._operations) > MAX_OPERATIONS:
            self._operations.popitem(last=False)

    async def _assign(
        self,
        operation: Operation,
        enrollment: Enrollment,
        payload: Any,
        chain: list[x509.Certificate],
        issue: IssueRequest | None,
    ) -> None:
        if self.assignment_delay_s > 0:
            await asyncio.sleep(self.assignment_delay_s)
        try:
            registration = await self.assigner.assign(
                operation.registration_id, enrollment, payload, chain
            )
        except DevCloudError as exc:
            self._remember(replace(operation, status="failed", error=exc))
            self.history.record(
                operation.registration_id,
                "failed",
                exc.status,
                errorCode=exc.error_code,
                message=exc.message,
            )
            return
        issued: tuple[str, ...] = ()
        if issue is not None and self.issuer is not None:
            refusal = self.registry.renewal_refusal(
                registration.assigned_hub, registration.device_id
            )
            certs = self.issuer.issue(
                issue.csr,
                issue.policy,
                registration_id=registration.registration_id,
                device_id=registration.device_id,
                hub=registration.assigned_hub,
                via=IssuedVia.DPS,
                # A re-registration is a renewal too: "connect" refusals apply to it.
                refused=refusal is not None and refusal.mode is RefusalMode.CONNECT,
            )
            issued = tuple(b64_der(cert) for cert in certs)
        self.registry.count_assignment(operation.registration_id)
        self.history.record(
            operation.registration_id,
            "assigned",
            200,
            hub=registration.assigned_hub,
            deviceId=registration.device_id,
            substatus=registration.substatus,
        )
        self._remember(
            replace(operation, status="assigned", registration=registration, issued_chain=issued)
        )

    def operation(self, registration_id: str, operation_id: str) -> Operation:
        """The operation, if it belongs to ``registration_id``; else :class:`NotFoundError`."""
        found = self._operations.get(operation_id)
        if found is None or found.registration_id != registration_id:
            raise NotFoundError(f"operation {operation_id!r} not found", error_code=404205)
        return found

    async def settle(self) -> None:
        """Wait until every assignment in flight has completed (for tests and shutdown)."""
        for _ in range(1000):  # bounded: each round awaits every task then in flight
            if not self._tasks:
                return
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await asyncio.sleep(0)  # let done-callbacks forget the finished tasks

    async def drain(self) -> None:
        """Cancel running assignments (devcloud is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status_body(self, operation: Operation) -> JsonObject:
        """The JSON body of an operation-status answer."""
        if operation.status == "assigning":
            return {"operationId": operation.operation_id, "status": "assigning"}
        if operation.status == "failed":
            error = operation.error
            now = self.registry.now()
            return {
                "operationId": operation.operation_id,
                "status": "failed",
                "registrationState": {
                    "registrationId": operation.registration_id,
                    "createdDateTimeUtc": now,
                    "status": "failed",
                    "errorCode": error.error_code if error else 500000,
                    "errorMessage": error.message if error else "failed",
                    "lastUpdatedDateTimeUtc": now,
                },
            }
        reg = operation.registration
        assert reg is not None
        state: JsonObject = {
            "registrationId": reg.registration_id,
            "createdDateTimeUtc": reg.created,
            "assignedHub": self.assigner.hubs.hostname(reg.assigned_hub),
            "deviceId": reg.device_id,
            "status": "assigned",
            "substatus": reg.substatus,
            "lastUpdatedDateTimeUtc": reg.updated,
            "etag": reg.etag,
            "payload": reg.payload,
        }
        if operation.issued_chain:
            state["issuedCertificateChain"] = list(operation.issued_chain)
        return {
            "operationId": operation.operation_id,
            "status": "assigned",
            "registrationState": state,
        }


class DpsEndpoint:
    """The DPS :class:`~devcloud.mqtt.endpoint.Endpoint`."""

    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner

    def authenticate(
        self, request: ConnectRequest, connection: Connection
    ) -> tuple[int, DeviceSession | None]:
        """Accept ``{idScope}/registrations/{clientId}/api-version=...`` with a matching CN."""
        parts = (request.username or "").split("/")
        if len(parts) < 4 or parts[1] != "registrations" or not parts[3].startswith("api-version="):
            return CONNACK_BAD_USERNAME_OR_PASSWORD, None
        if parts[0] != self.provisioner.id_scope or parts[2] != request.client_id:
            return CONNACK_NOT_AUTHORIZED, None
        if not leaf_accepted(request.cert_chain, request.client_id, None):
            return CONNACK_NOT_AUTHORIZED, None
        api_version = parts[3][len("api-version=") :].split("&", 1)[0]
        return CONNACK_ACCEPTED, DpsSession(self.provisioner, request, connection, api_version)


class DpsSession:
    """One device's DPS connection."""

    def __init__(
        self,
        provisioner: Provisioner,
        request: ConnectRequest,
        connection: Connection,
        api_version: str = "2019-03-31",
    ) -> None:
        self.provisioner = provisioner
        self.registration_id = request.client_id
        self.chain = tuple(request.cert_chain)
        self.connection = connection
        #: The api-version of the CONNECT username (decides whether ``csr`` is known).
        self.api_version = api_version

    def on_subscribe(self, topic_filter: str, qos: int) -> int:
        """Grant only ``$dps/registrations/res/#``."""
        return min(qos, 1) if topic_filter == RESPONSE_FILTER else 0x80

    def on_publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Answer a register or poll request; anything else closes the connection."""
        if topic.startswith(REGISTER_PREFIX):
            rid = _query(topic).get("$rid", "")
            try:
                self._check_api_version(payload)
                operation = self.provisioner.begin(self.registration_id, payload, self.chain)
            except DevCloudError as exc:
                self._error(rid, exc)
                return
            self._respond(202, rid, self.provisioner.status_body(operation), retry=True)
        elif topic.startswith(POLL_PREFIX):
            query = _query(topic)
            rid = query.get("$rid", "")
            try:
                operation = self.provisioner.operation(
                    self.registration_id, query.get("operationId", "")
                )
            except DevCloudError as exc:
                self._error(rid, exc)
                return
            assigning = operation.status == "assigning"
            body = self.provisioner.status_body(operation)
            self._respond(202 if assigning else 200, rid, body, retry=assigning)
        else:
            raise ProtocolViolation(f"DPS does not accept PUBLISH on {topic!r}")

    def _check_api_version(self, payload: bytes) -> None:
        """A ``csr`` field is only known to the issuance api-version (else 400)."""
        if self.api_version == ISSUANCE_API_VERSION or b'"csr"' not in payload:
            return
        try:
            request = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return  # begin() answers that
        if isinstance(request, dict) and "csr" in request:
            raise InvalidRequestError(
                f"the 'csr' field needs api-version={ISSUANCE_API_VERSION}, "
                f"not {self.api_version!r}"
            )

    def on_disconnect(self, reason: str) -> None:
        """Nothing to release: assignments in flight complete regardless."""

    def _respond(self, status: int, rid: str, body: JsonObject, *, retry: bool) -> None:
        topic = f"$dps/registrations/res/{status}/?$rid={urllib.parse.quote(rid)}"
        if retry:
            topic += f"&retry-after={self.provisioner.retry_after_s}"
        self.connection.publish(topic, json.dumps(body).encode(), 1)

    def _error(self, rid: str, error: DevCloudError) -> None:
        self.provisioner.history.record(
            self.registration_id,
            "refused",
            error.status,
            errorCode=error.error_code,
            message=error.message,
        )
        body = {
            "errorCode": error.error_code,
            "trackingId": self.provisioner.tracking_id(),
            "message": error.message,
            "timestampUtc": self.provisioner.registry.now(),
        }
        topic = f"$dps/registrations/res/{error.status}/?$rid={urllib.parse.quote(rid)}"
        if isinstance(error, ThrottledError):
            topic += f"&retry-after={error.retry_after_s}"
        self.connection.publish(topic, json.dumps(body).encode(), 1)
