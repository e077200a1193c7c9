"""The DPS registration topics and payloads (register, poll, responses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from agent.core.wire.codec import (
    _DPS_RES_PREFIX,
    _json_object,
    _optional_int,
    _optional_str,
    _query,
    _rid,
    _split_query,
    _status,
    encode_json,
)
from agent.errors import ProtocolError

# --- DPS -------------------------------------------------------------------------------

#: The DPS api-version that knows ``csr`` / ``issuedCertificateChain`` (Azure Device
#: Registry certificate management, preview; see the README, "Certificate issuance").
ISSUANCE_API_VERSION = "2025-07-01-preview"


def format_dps_register(
    rid: str,
    registration_id: str,
    payload: Mapping[str, object] | None,
    csr: str | None = None,
) -> tuple[str, bytes]:
    """The register request: ``$dps/registrations/PUT/iotdps-register/?$rid=...``.

    ``csr``: base64 DER PKCS#10 (CN = the registration id) asking DPS to issue the
    operational certificate (needs :data:`ISSUANCE_API_VERSION` in the username).
    """
    topic = f"$dps/registrations/PUT/iotdps-register/?$rid={quote(rid, safe='')}"
    body: dict[str, object] = {
        "registrationId": registration_id,
        "payload": dict(payload) if payload else None,
    }
    if csr is not None:
        body["csr"] = csr
    return topic, encode_json(body)


def format_dps_poll(rid: str, operation_id: str) -> tuple[str, bytes]:
    """The operation-status poll for a registration DPS is still assigning."""
    query = _query({"$rid": rid, "operationId": operation_id})
    return f"$dps/registrations/GET/iotdps-get-operationstatus/?{query}", b""


@dataclass(frozen=True)
class RegistrationState:
    """DPS's ``registrationState``: where the device was assigned (or why not)."""

    registration_id: str | None
    status: str | None
    assigned_hub: str | None = None
    device_id: str | None = None
    substatus: str | None = None
    etag: str | None = None
    created_utc: str | None = None
    last_updated_utc: str | None = None
    payload: object = None
    error_code: int | None = None
    error_message: str | None = None
    #: ``issuedCertificateChain``: base64 DER certificates, leaf first (issuance only).
    issued_chain: tuple[str, ...] = ()


@dataclass(frozen=True)
class DpsResponse:
    """One message on ``$dps/registrations/res/#``."""

    status: int
    rid: str
    retry_after_s: float | None
    operation_id: str | None = None
    #: ``assigning`` / ``assigned`` / ``failed`` / ``disabled`` (operation status), if any.
    operation_status: str | None = None
    registration_state: RegistrationState | None = None
    error_code: int | None = None
    message: str | None = None


def parse_dps_response(topic: str, payload: bytes) -> DpsResponse:
    """Decode a DPS response topic and its JSON body."""
    what = "DPS response"
    if not topic.startswith(_DPS_RES_PREFIX):
        raise ProtocolError(f"{what}: unexpected topic {topic!r}")
    path, query = _split_query(topic, _DPS_RES_PREFIX, what)
    status = _status(path, topic, what)
    rid = _rid(query, topic, what)
    retry_after = _optional_int(query, "retry-after", topic, what)
    body = _json_object(payload, what) if payload.strip() else {}
    state_obj = body.get("registrationState")
    state: RegistrationState | None = None
    if state_obj is not None:
        if not isinstance(state_obj, dict):
            raise ProtocolError(f"{what}: 'registrationState' is not an object")
        state = _registration_state(state_obj, what)
    error_code = body.get("errorCode")
    if error_code is not None and (isinstance(error_code, bool) or not isinstance(error_code, int)):
        raise ProtocolError(f"{what}: 'errorCode' is {type(error_code).__name__}, not a number")
    return DpsResponse(
        status=status,
        rid=rid,
        retry_after_s=float(retry_after) if retry_after is not None else None,
        operation_id=_optional_str(body, "operationId", what),
        operation_status=_optional_str(body, "status", what),
        registration_state=state,
        error_code=error_code,
        message=_optional_str(body, "message", what),
    )


def _registration_state(obj: Mapping[str, object], what: str) -> RegistrationState:
    what = f"{what} registrationState"
    error_code = obj.get("errorCode")
    if error_code is not None and (isinstance(error_code, bool) or not isinstance(error_code, int)):
        raise ProtocolError(f"{what}: 'errorCode' is not a number")
    chain = obj.get("issuedCertificateChain")
    if chain is not None and (
        not isinstance(chain, list) or not all(isinstance(c, str) and c for c in chain)
    ):
        raise ProtocolError(f"{what}: 'issuedCertificateChain' is not a list of strings")
    return RegistrationState(
        issued_chain=tuple(chain or ()),
        registration_id=_optional_str(obj, "registrationId", what),
        status=_optional_str(obj, "status", what),
        assigned_hub=_optional_str(obj, "assignedHub", what),
        device_id=_optional_str(obj, "deviceId", what),
        substatus=_optional_str(obj, "substatus", what),
        etag=_optional_str(obj, "etag", what),
        created_utc=_optional_str(obj, "createdDateTimeUtc", what),
        last_updated_utc=_optional_str(obj, "lastUpdatedDateTimeUtc", what),
        payload=obj.get("payload"),
        error_code=error_code,
        error_message=_optional_str(obj, "errorMessage", what),
    )


def format_dps_response(
    status: int,
    rid: str,
    body: Mapping[str, object] | None,
    *,
    retry_after_s: int | None = None,
) -> tuple[str, bytes]:
    """The server side of :func:`parse_dps_response` (used by tests and fakes)."""
    query: dict[str, str] = {"$rid": rid}
    if retry_after_s is not None:
        query["retry-after"] = str(retry_after_s)
    topic = f"{_DPS_RES_PREFIX}{status}/?{_query(query)}"
    return topic, encode_json(dict(body)) if body is not None else b""
