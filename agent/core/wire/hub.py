"""The IoT Hub topics and payloads: telemetry, cloud-to-device, twin, direct methods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlencode

from agent.core.wire.codec import (
    _METHOD_POST_PREFIX,
    _TWIN_DESIRED_PREFIX,
    _TWIN_RES_PREFIX,
    MAX_MESSAGE_BYTES,
    _json_any,
    _json_object,
    _optional_int,
    _optional_object,
    _query,
    _rid,
    _split_query,
    _status,
    encode_json,
)
from agent.errors import ProtocolError

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
