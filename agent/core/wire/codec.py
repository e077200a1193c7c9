"""What every DPS and IoT Hub topic shares: filters, credentials, JSON and query helpers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
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
    model_id: str = "",
) -> str:
    """The MQTT username IoT Hub expects (client id is the device id, no password).

    ``model_id`` announces an IoT Plug and Play model, percent-encoded as Microsoft's
    SDKs send it: ``...&model-id=dtmi%3Aexample%3AThing%3B1`` (api-version 2020-09-30 or
    later).
    """
    query = {"api-version": api_version}
    if client_version:
        query["DeviceClientType"] = client_version
    if model_id:
        query["model-id"] = model_id
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


def is_finite_number(value: object) -> bool:
    """True for int/float JSON numbers that are finite (bools excluded)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
