"""One DPS registration attempt, as a sans-I/O machine.

Theory of operation
-------------------
The daemon opens an MQTT connection to DPS when the lifecycle asks for it and feeds
what happens on that connection into a fresh :class:`Registration`; the machine
answers with actions (:class:`~agent.core.actions.Subscribe`, :class:`~agent.core.actions.Publish`,
timers) and ends with exactly one :class:`Assigned` or :class:`Failed`. Then the
daemon closes the connection and tells the lifecycle.

::

    CONNECTING --DpsConnected--> SUBSCRIBING --DpsSubscribed--> REGISTERING
    REGISTERING/POLLING --202 or 200 "assigning"--> WAITING --timer--> POLLING
        (after retry-after; when it is absent or under 1 s, the default poll interval)
    any --429--> WAITING (retry-after, else capped full jitter) --timer--> resend
    any --200 "assigned"--> DONE (Assigned)
    any --200 "failed"/"disabled", 401/403/404--> DONE (Failed, rejected=True)
    any --other 4xx/5xx, no answer in time, connection lost--> DONE (Failed)

Failure policy: inside one attempt only throttling (429) and "still assigning" are
waited out, on the same connection; everything else ends the attempt and the
lifecycle decides when to try again (slowly after a rejection, with backoff after a
transient failure). Responses whose ``$rid`` is not the outstanding request's are
ignored, so a late answer to an earlier request cannot be taken for the current one.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.core import wire
from agent.core.actions import CancelTimer, Publish, StartTimer, Subscribe
from agent.core.assignment import Assignment, hub_allowed
from agent.core.backoff import Backoff, BackoffPolicy
from agent.core.text import clip
from agent.errors import (
    DPS_UNAUTHORIZED_CAUSES,
    AgentError,
    ConnectionRefusedByServer,
    ProtocolError,
    ProvisioningError,
    ThrottledError,
    TransportError,
)

RETRY_TIMER = "dps.retry"
TIMEOUT_TIMER = "dps.timeout"
#: DPS statuses that mean "this device is not welcome", not "try again soon".
REJECTION_STATUSES = frozenset({401, 403, 404})
#: A 408-like status for a request DPS never answered.
NO_RESPONSE_STATUS = 408
#: The shortest ``retry-after`` honoured while DPS is assigning (see ``_on_message``).
MIN_POLL_S = 1.0


# --- events in --------------------------------------------------------------------------


@dataclass(frozen=True)
class DpsConnected:
    """CONNACK 0 from DPS."""


@dataclass(frozen=True)
class DpsConnectRefused:
    """DPS answered CONNECT with a non-zero return code."""

    return_code: int


@dataclass(frozen=True)
class DpsSubscribed:
    """SUBACK for the response filter."""

    granted_qos: tuple[int, ...]


@dataclass(frozen=True)
class DpsMessage:
    """A PUBLISH from DPS."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class DpsConnectionLost:
    """The connection failed before or after CONNACK."""

    reason: str


@dataclass(frozen=True)
class DpsTimerFired:
    """A timer this machine started has fired."""

    name: str


DpsEvent = (
    DpsConnected
    | DpsConnectRefused
    | DpsSubscribed
    | DpsMessage
    | DpsConnectionLost
    | DpsTimerFired
)

# --- actions out (besides Publish / Subscribe / StartTimer / CancelTimer) -------------------


@dataclass(frozen=True)
class RegistrationSent:
    """A register request went to DPS (counts against the reprovisioning budget)."""


@dataclass(frozen=True)
class Assigned:
    """The attempt succeeded."""

    assignment: Assignment
    #: The certificate DPS issued for the CSR (base64 DER, leaf first), if one was sent.
    issued_chain: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failed:
    """The attempt failed; ``rejected`` means DPS (or its TLS front) refused this device."""

    error: AgentError
    rejected: bool
    retry_after_s: float | None = None


DpsAction = Publish | Subscribe | StartTimer | CancelTimer | RegistrationSent | Assigned | Failed


class Phase(enum.Enum):
    """Where one attempt stands."""

    CONNECTING = "connecting"
    SUBSCRIBING = "subscribing"
    REGISTERING = "registering"
    WAITING = "waiting"
    POLLING = "polling"
    DONE = "done"


def registration_payload(
    *,
    model: str,
    agent_version: str,
    sensors: Sequence[str],
    extra: Mapping[str, object] | None = None,
    model_id: str = "",
) -> dict[str, object]:
    """The custom-allocation payload sent with a registration.

    ``model_id`` (IoT Plug and Play) goes in as ``modelId``, which IoT Central reads to
    pick the device template.
    """
    payload: dict[str, object] = dict(extra or {})
    payload.update({"model": model, "agentVersion": agent_version, "sensors": list(sensors)})
    if model_id:
        payload["modelId"] = model_id
    return payload


class Registration:
    """One registration attempt on one DPS connection."""

    def __init__(
        self,
        registration_id: str,
        payload: Mapping[str, object] | None,
        *,
        rng: random.Random,
        response_timeout_s: float = 30.0,
        default_poll_s: float = 3.0,
        throttle_policy: BackoffPolicy | None = None,
        max_throttled: int = 8,
        fallback_time_utc: str = "",
        csr: str | None = None,
        allowed_hub_suffixes: Sequence[str] | None = None,
    ) -> None:
        self.registration_id = registration_id
        #: Base64 DER CSR sent with the request (certificate issuance), if any.
        self.csr = csr
        self.payload = dict(payload) if payload is not None else None
        self.response_timeout_s = response_timeout_s
        self.default_poll_s = default_poll_s
        self.max_throttled = max_throttled
        self.fallback_time_utc = fallback_time_utc
        #: None: any hub DPS names is accepted (only for tests of the protocol itself).
        self.allowed_hub_suffixes = (
            None if allowed_hub_suffixes is None else tuple(allowed_hub_suffixes)
        )
        self._throttle = Backoff(throttle_policy or BackoffPolicy(1.0, 60.0), rng)
        self.phase = Phase.CONNECTING
        self.operation_id: str | None = None
        self.throttled = 0
        self._next_rid = 0
        self._outstanding_rid: str | None = None
        self.outcome: Assigned | Failed | None = None

    # -- public ------------------------------------------------------------------------

    def handle(self, event: DpsEvent) -> list[DpsAction]:
        """Feed one event; returns the actions to carry out, in order."""
        if self.phase is Phase.DONE:
            return []
        match event:
            case DpsConnected():
                if self.phase is not Phase.CONNECTING:
                    return self._fail(ProtocolError("DPS: second CONNACK on one connection"))
                self.phase = Phase.SUBSCRIBING
                return [
                    Subscribe(wire.DPS_RESPONSE_FILTER, 1),
                    StartTimer(TIMEOUT_TIMER, self.response_timeout_s),
                ]
            case DpsConnectRefused(return_code=code):
                refused = ConnectionRefusedByServer(code, "DPS")
                return self._fail(refused, rejected=refused.is_rejection)
            case DpsConnectionLost(reason=reason):
                return self._fail(TransportError(f"DPS connection lost: {reason}"))
            case DpsSubscribed(granted_qos=granted):
                if self.phase is not Phase.SUBSCRIBING:
                    return []
                if not granted or any(q not in (0, 1) for q in granted):
                    return self._fail(ProtocolError(f"DPS refused the subscription ({granted})"))
                return [*self._send_register(), RegistrationSent()]
            case DpsMessage(topic=topic, payload=payload):
                return self._on_message(topic, payload)
            case DpsTimerFired(name=name):
                return self._on_timer(name)

    # -- internals ---------------------------------------------------------------------

    def _rid(self) -> str:
        self._next_rid += 1
        self._outstanding_rid = str(self._next_rid)
        return self._outstanding_rid

    def _send_register(self) -> list[DpsAction]:
        self.phase = Phase.REGISTERING
        topic, body = wire.format_dps_register(
            self._rid(), self.registration_id, self.payload, self.csr
        )
        return [Publish(topic, body, 1), StartTimer(TIMEOUT_TIMER, self.response_timeout_s)]

    def _send_poll(self, operation_id: str) -> list[DpsAction]:
        self.phase = Phase.POLLING
        topic, body = wire.format_dps_poll(self._rid(), operation_id)
        return [Publish(topic, body, 1), StartTimer(TIMEOUT_TIMER, self.response_timeout_s)]

    def _fail(
        self, error: AgentError, *, rejected: bool = False, retry_after_s: float | None = None
    ) -> list[DpsAction]:
        self.phase = Phase.DONE
        self.outcome = Failed(error, rejected, retry_after_s)
        return [CancelTimer(RETRY_TIMER), CancelTimer(TIMEOUT_TIMER), self.outcome]

    def _wait(self, delay_s: float) -> list[DpsAction]:
        self.phase = Phase.WAITING
        self._outstanding_rid = None
        return [CancelTimer(TIMEOUT_TIMER), StartTimer(RETRY_TIMER, delay_s)]

    def _on_timer(self, name: str) -> list[DpsAction]:
        if name == TIMEOUT_TIMER and self.phase in (
            Phase.SUBSCRIBING,
            Phase.REGISTERING,
            Phase.POLLING,
        ):
            error = ProvisioningError(
                NO_RESPONSE_STATUS,
                f"no answer while {self.phase.value} within {self.response_timeout_s:g} s",
            )
            return self._fail(error)
        if name == RETRY_TIMER and self.phase is Phase.WAITING:
            if self.operation_id is not None:
                return self._send_poll(self.operation_id)
            return self._send_register()
        return []

    def _on_message(self, topic: str, payload: bytes) -> list[DpsAction]:
        try:
            response = wire.parse_dps_response(topic, payload)
        except ProtocolError as exc:
            return self._fail(exc)
        if response.rid != self._outstanding_rid:
            return []  # stale or unsolicited: not the answer we are waiting for
        status = response.status
        if status == 429:
            self.throttled += 1
            if self.throttled > self.max_throttled:
                throttled = ThrottledError(
                    429,
                    f"still throttled after {self.max_throttled} retries",
                    retry_after_s=response.retry_after_s,
                )
                return self._fail(throttled, retry_after_s=response.retry_after_s)
            return self._wait(self._throttle.next_delay_s(response.retry_after_s))
        state = response.registration_state
        op_status = response.operation_status or (state.status if state else None)
        if status == 202 or (status == 200 and op_status == "assigning"):
            if not response.operation_id:
                return self._fail(ProtocolError("DPS: 'assigning' without an operationId"))
            self.operation_id = response.operation_id
            delay = response.retry_after_s
            # retry-after 0 would have the device poll as fast as DPS answers, for as long
            # as the assignment takes: under MIN_POLL_S, poll at the default interval
            # instead (as Microsoft's SDKs floor it at theirs).
            return self._wait(
                delay if delay is not None and delay >= MIN_POLL_S else self.default_poll_s
            )
        if status == 200:
            return self._on_final(response)
        message = clip(response.message or f"DPS answered {status}", 400)
        if status in (401, 403):
            message = f"{message} ({DPS_UNAUTHORIZED_CAUSES})"
        error = ProvisioningError(status, message, retry_after_s=response.retry_after_s)
        return self._fail(
            error, rejected=status in REJECTION_STATUSES, retry_after_s=response.retry_after_s
        )

    def _on_final(self, response: wire.DpsResponse) -> list[DpsAction]:
        state = response.registration_state
        status = response.operation_status or (state.status if state else None)
        if status == "assigned":
            if state is None or not state.assigned_hub or not state.device_id:
                return self._fail(ProtocolError("DPS: 'assigned' without assignedHub/deviceId"))
            suffixes = self.allowed_hub_suffixes
            if suffixes is not None and not hub_allowed(state.assigned_hub, suffixes):
                refused = ProvisioningError(
                    200,
                    f"DPS assigned the hub {clip(state.assigned_hub, 100)!r}, which is not in "
                    f"[dps] allowed_hub_suffixes ({', '.join(suffixes)}); refused",
                )
                return self._fail(refused, rejected=True)
            assignment = Assignment(
                assigned_hub=state.assigned_hub,
                device_id=state.device_id,
                provisioned_at=state.last_updated_utc
                or state.created_utc
                or self.fallback_time_utc,
                substatus=state.substatus,
                payload=state.payload,
            )
            if self.csr is not None and not state.issued_chain:
                return self._fail(
                    ProtocolError("DPS assigned the device but issued no certificate for the CSR")
                )
            self.phase = Phase.DONE
            self.outcome = Assigned(assignment, state.issued_chain)
            return [CancelTimer(RETRY_TIMER), CancelTimer(TIMEOUT_TIMER), self.outcome]
        detail = clip((state.error_message if state else None) or response.message or "", 400)
        error = ProvisioningError(200, f"registration {status}: {detail}".rstrip(": "))
        return self._fail(error, rejected=status in ("failed", "disabled"))
