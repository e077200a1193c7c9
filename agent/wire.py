"""Sans-I/O codec for every DPS and IoT Hub MQTT topic and payload.

Theory of operation
-------------------
Nothing here touches a socket. ``format_*`` functions turn what the agent wants to
say into ``(topic, payload bytes)``; ``parse_*`` functions turn what arrived
(``topic``, ``payload``) into frozen dataclasses. Anything malformed -- an unknown
topic, a missing ``$rid``, a status that is not a number, JSON that is not an
object, a field of the wrong type -- raises :class:`~agent.errors.ProtocolError`
saying what was wrong, and nothing else: the cloud's input never crashes the agent
with a ``KeyError``.

Topic shapes (see the wire facts in DESIGN.md)::

    $dps/registrations/PUT/iotdps-register/?$rid={rid}
    $dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}
    $dps/registrations/res/{status}/?$rid={rid}&retry-after={s}
    devices/{id}/messages/events/{url-encoded property bag}
    devices/{id}/messages/devicebound/{url-encoded property bag}
    $iothub/twin/GET/?$rid={rid}
    $iothub/twin/PATCH/properties/reported/?$rid={rid}
    $iothub/twin/PATCH/properties/desired/?$version={n}
    $iothub/twin/res/{status}/?$rid={rid}[&$version={n}]
    $iothub/methods/POST/{name}/?$rid={rid}
    $iothub/methods/res/{status}/?$rid={rid}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode

from agent.errors import ProtocolError

# --- subscriptions -------------------------------------------------------------------

DPS_RESPONSE_FILTER: Final = "$dps/registrations/res/#"
TWIN_RESPONSE_FILTER: Final = "$iothub/twin/res/#"
TWIN_DESIRED_FILTER: Final = "$iothub/twin/PATCH/properties/desired/#"
METHODS_FILTER: Final = "$iothub/methods/POST/#"

DPS_API_VERSION: Final = "2019-03-31"
HUB_API_VERSION: Final = "2021-04-12"

_DPS_RES_PREFIX: Final = "$dps/registrations/res/"
_TWIN_RES_PREFIX: Final = "$iothub/twin/res/"
_TWIN_DESIRED_PREFIX: Final = "$iothub/twin/PATCH/properties/desired/"
_METHOD_POST_PREFIX: Final = "$iothub/methods/POST/"

#: IoT Hub refuses device-to-cloud messages above this size.
MAX_MESSAGE_BYTES: Final = 256 * 1024


def c2d_filter(device_id: str) -> str:
    """The cloud-to-device subscription filter for ``device_id``."""
    return f"devices/{device_id}/messages/devicebound/#"


# --- CONNECT credentials ---------------------------------------------------------------


def dps_username(
    id_scope: str,
    registration_id: str,
    *,
    api_version: str = DPS_API_VERSION,
    client_version: str = "",
) -> str:
    """The MQTT username DPS expects (client id is the registration id, no password)."""
    query = {"api-version": api_version}
    if client_version:
        query["ClientVersion"] = client_version
    return f"{id_scope}/registrations/{registration_id}/{urlencode(query, quote_via=quote)}"


def hub_username(
    hub_hostname: str,
    device_id: str,
    *,
    api_version: str = HUB_API_VERSION,
    client_version: str = "",
) -> str:
    """The MQTT username IoT Hub expects (client id is the device id, no password)."""
    query = {"api-version": api_version}
    if client_version:
        query["DeviceClientType"] = client_version
    return f"{hub_hostname}/{device_id}/?{urlencode(query, quote_via=quote)}"


# --- helpers ---------------------------------------------------------------------------


def _json_object(payload: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what}: payload is not UTF-8 JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: payload is JSON {type(value).__name__}, expected an object")
    return value


def _json_any(payload: bytes, what: str) -> object:
    if not payload.strip():
        return None
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what}: payload is not UTF-8 JSON ({exc})") from exc


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON, rejecting NaN/Infinity (which are not JSON)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode as JSON: {exc}") from exc


def _query(pairs: Mapping[str, str]) -> str:
    """Encode a topic query as the SDK does: ``$`` kept literal in keys, values escaped."""
    return "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in pairs.items())


def _split_query(topic: str, prefix: str, what: str) -> tuple[str, dict[str, str]]:
    """Split ``{prefix}{path}/?{query}`` into ``(path, query)``."""
    rest = topic[len(prefix) :]
    path, sep, query = rest.partition("/?")
    if not sep:
        raise ProtocolError(f"{what}: topic {topic!r} has no '/?' query part")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ProtocolError(f"{what}: malformed query in topic {topic!r}") from exc
    return path, dict(pairs)


def _status(text: str, topic: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) != 3:
        raise ProtocolError(f"{what}: status {text!r} in topic {topic!r} is not a 3-digit number")
    return int(text)


def _rid(query: Mapping[str, str], topic: str, what: str) -> str:
    rid = query.get("$rid")
    if not rid:
        raise ProtocolError(f"{what}: topic {topic!r} has no $rid")
    return rid


def _optional_int(query: Mapping[str, str], key: str, topic: str, what: str) -> int | None:
    text = query.get(key)
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()):
        raise ProtocolError(f"{what}: {key}={text!r} in topic {topic!r} is not a whole number")
    return int(text)


def _optional_str(obj: Mapping[str, object], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: {key!r} is {type(value).__name__}, expected a string")
    return value


def _optional_object(obj: Mapping[str, object], key: str, what: str) -> Mapping[str, object]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: {key!r} is {type(value).__name__}, expected an object")
    return value


# --- DPS -------------------------------------------------------------------------------


def format_dps_register(
    rid: str, registration_id: str, payload: Mapping[str, object] | None
) -> tuple[str, bytes]:
    """The register request: ``$dps/registrations/PUT/iotdps-register/?$rid=...``."""
    topic = f"$dps/registrations/PUT/iotdps-register/?$rid={quote(rid, safe='')}"
    body = {"registrationId": registration_id, "payload": dict(payload) if payload else None}
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
    return RegistrationState(
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


# --- IoT Hub telemetry and C2D -------------------------------------------------------------


def encode_property_bag(properties: Mapping[str, str]) -> str:
    """URL-encode a message property bag (``$.ct=application%2Fjson&...``)."""
    for key, value in properties.items():
        if not key:
            raise ProtocolError("property bag: empty property name")
        if not isinstance(value, str):
            raise ProtocolError(f"property bag: value of {key!r} is not a string")
    return urlencode(list(properties.items()), quote_via=quote, safe="")


def decode_property_bag(text: str) -> dict[str, str]:
    """Inverse of :func:`encode_property_bag`."""
    if not text:
        return {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"property bag {text!r} is malformed") from exc
    return dict(pairs)


def format_telemetry(
    device_id: str, body: bytes, properties: Mapping[str, str]
) -> tuple[str, bytes]:
    """A device-to-cloud message: ``devices/{id}/messages/events/{property bag}``."""
    if not device_id or "/" in device_id or "+" in device_id or "#" in device_id:
        raise ProtocolError(f"telemetry: device id {device_id!r} cannot appear in a topic")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"telemetry: body of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return f"devices/{device_id}/messages/events/{encode_property_bag(properties)}", body


@dataclass(frozen=True)
class DeviceMessage:
    """A device-to-cloud or cloud-to-device message with its property bag."""

    device_id: str
    properties: Mapping[str, str]
    body: bytes


def _parse_device_message(topic: str, payload: bytes, kind: str) -> DeviceMessage:
    what = f"{kind} message"
    parts = topic.split("/", 4)
    if len(parts) != 5 or parts[0] != "devices" or parts[2] != "messages" or parts[3] != kind:
        raise ProtocolError(f"{what}: unexpected topic {topic!r}")
    if not parts[1]:
        raise ProtocolError(f"{what}: empty device id in topic {topic!r}")
    return DeviceMessage(parts[1], decode_property_bag(parts[4]), payload)


def parse_telemetry(topic: str, payload: bytes) -> DeviceMessage:
    """Decode a telemetry topic (what the hub sees; used by tests)."""
    return _parse_device_message(topic, payload, "events")


def parse_c2d(topic: str, payload: bytes) -> DeviceMessage:
    """Decode a cloud-to-device message."""
    return _parse_device_message(topic, payload, "devicebound")


# --- twin --------------------------------------------------------------------------------


def format_twin_get(rid: str) -> tuple[str, bytes]:
    """Request the full twin document."""
    return f"$iothub/twin/GET/?$rid={quote(rid, safe='')}", b""


def format_twin_patch_reported(rid: str, patch: Mapping[str, object]) -> tuple[str, bytes]:
    """Send a reported-properties patch."""
    topic = f"$iothub/twin/PATCH/properties/reported/?$rid={quote(rid, safe='')}"
    return topic, encode_json(dict(patch))


@dataclass(frozen=True)
class TwinResponse:
    """One message on ``$iothub/twin/res/#``: a GET's document or a PATCH's result."""

    status: int
    rid: str
    version: int | None
    body: object


@dataclass(frozen=True)
class TwinDocument:
    """The full twin as a GET returns it."""

    desired: Mapping[str, object]
    reported: Mapping[str, object]

    @property
    def desired_version(self) -> int | None:
        """``$version`` of the desired section, if present and a number."""
        return _version_of(self.desired)


def _version_of(obj: Mapping[str, object]) -> int | None:
    value = obj.get("$version")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def parse_twin_response(topic: str, payload: bytes) -> TwinResponse:
    """Decode ``$iothub/twin/res/{status}/?$rid=..[&$version=..]``."""
    what = "twin response"
    if not topic.startswith(_TWIN_RES_PREFIX):
        raise ProtocolError(f"{what}: unexpected topic {topic!r}")
    path, query = _split_query(topic, _TWIN_RES_PREFIX, what)
    return TwinResponse(
        status=_status(path, topic, what),
        rid=_rid(query, topic, what),
        version=_optional_int(query, "$version", topic, what),
        body=_json_any(payload, what),
    )


def parse_twin_document(body: object) -> TwinDocument:
    """Decode the body of a successful twin GET."""
    what = "twin document"
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: body is {type(body).__name__}, expected an object")
    return TwinDocument(
        desired=_optional_object(body, "desired", what),
        reported=_optional_object(body, "reported", what),
    )


def format_twin_response(
    status: int, rid: str, body: object, *, version: int | None = None
) -> tuple[str, bytes]:
    """The hub side of :func:`parse_twin_response` (for tests and fakes)."""
    query: dict[str, str] = {"$rid": rid}
    if version is not None:
        query["$version"] = str(version)
    payload = b"" if body is None else encode_json(body)
    return f"{_TWIN_RES_PREFIX}{status}/?{_query(query)}", payload


@dataclass(frozen=True)
class DesiredPatch:
    """A desired-properties push: ``$iothub/twin/PATCH/properties/desired/?$version=n``."""

    version: int | None
    patch: Mapping[str, object]


def parse_desired_patch(topic: str, payload: bytes) -> DesiredPatch:
    """Decode a desired-properties push."""
    what = "desired patch"
    if not topic.startswith(_TWIN_DESIRED_PREFIX):
        raise ProtocolError(f"{what}: unexpected topic {topic!r}")
    path, query = _split_query(topic, _TWIN_DESIRED_PREFIX.rstrip("/"), what)
    if path:
        raise ProtocolError(f"{what}: unexpected path {path!r} in topic {topic!r}")
    patch = _json_object(payload, what)
    version = _optional_int(query, "$version", topic, what)
    if version is None:
        version = _version_of(patch)
    return DesiredPatch(version=version, patch=patch)


def format_desired_patch(version: int, patch: Mapping[str, object]) -> tuple[str, bytes]:
    """The hub side of :func:`parse_desired_patch`."""
    return f"{_TWIN_DESIRED_PREFIX}?$version={version}", encode_json(dict(patch))


# --- direct methods -------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodRequest:
    """A direct method call: name, request id and the decoded JSON payload (or None)."""

    name: str
    rid: str
    payload: object = field(default=None)


def parse_method_request(topic: str, payload: bytes) -> MethodRequest:
    """Decode ``$iothub/methods/POST/{name}/?$rid={rid}``.

    An undecodable payload is still a method request -- the caller must answer it
    (400) -- so it is reported as :class:`MalformedMethodPayload`, which carries
    the name and rid.
    """
    what = "method request"
    if not topic.startswith(_METHOD_POST_PREFIX):
        raise ProtocolError(f"{what}: unexpected topic {topic!r}")
    name, query = _split_query(topic, _METHOD_POST_PREFIX, what)
    if not name or "/" in name:
        raise ProtocolError(f"{what}: bad method name {name!r} in topic {topic!r}")
    rid = _rid(query, topic, what)
    try:
        value = _json_any(payload, what)
    except ProtocolError as exc:
        raise MalformedMethodPayload(name, rid, str(exc)) from exc
    return MethodRequest(name=name, rid=rid, payload=value)


class MalformedMethodPayload(ProtocolError):
    """A method request whose payload is not JSON: answer ``rid`` with 400."""

    def __init__(self, name: str, rid: str, problem: str) -> None:
        self.name = name
        self.rid = rid
        self.problem = problem
        super().__init__(problem)


def format_method_request(name: str, rid: str, payload: object) -> tuple[str, bytes]:
    """The hub side of :func:`parse_method_request`."""
    return f"{_METHOD_POST_PREFIX}{name}/?$rid={quote(rid, safe='')}", encode_json(payload)


def format_method_response(rid: str, status: int, payload: object) -> tuple[str, bytes]:
    """Answer a direct method: ``$iothub/methods/res/{status}/?$rid={rid}``."""
    if not 100 <= status <= 999:
        raise ProtocolError(f"method response: status {status} is not a 3-digit code")
    return f"$iothub/methods/res/{status}/?$rid={quote(rid, safe='')}", encode_json(payload)


@dataclass(frozen=True)
class MethodResponse:
    """The device's answer to a method, as the hub sees it."""

    status: int
    rid: str
    payload: object


def parse_method_response(topic: str, payload: bytes) -> MethodResponse:
    """Decode a method response (the hub side; used by tests)."""
    what = "method response"
    prefix = "$iothub/methods/res/"
    if not topic.startswith(prefix):
        raise ProtocolError(f"{what}: unexpected topic {topic!r}")
    path, query = _split_query(topic, prefix, what)
    return MethodResponse(
        status=_status(path, topic, what),
        rid=_rid(query, topic, what),
        payload=_json_any(payload, what),
    )


# --- dispatch of everything a device can receive -----------------------------------------------

HubIncoming = TwinResponse | DesiredPatch | MethodRequest | DeviceMessage


def parse_hub_message(topic: str, payload: bytes) -> HubIncoming:
    """Decode any message the hub sends a device, by topic."""
    if topic.startswith(_TWIN_RES_PREFIX):
        return parse_twin_response(topic, payload)
    if topic.startswith(_TWIN_DESIRED_PREFIX):
        return parse_desired_patch(topic, payload)
    if topic.startswith(_METHOD_POST_PREFIX):
        return parse_method_request(topic, payload)
    if topic.startswith("devices/"):
        return parse_c2d(topic, payload)
    raise ProtocolError(f"hub message on unexpected topic {topic!r}")


def is_finite_number(value: object) -> bool:
    """True for int/float JSON numbers that are finite (bools excluded)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
