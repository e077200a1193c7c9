"""Sans-I/O codec for every DPS and IoT Hub MQTT topic and payload.

The codec is split by protocol: :mod:`~agent.core.wire.codec` (what every topic
shares), :mod:`~agent.core.wire.dps` and :mod:`~agent.core.wire.hub`; every public
name is re-exported here, so callers write ``wire.format_twin_get(...)``. The DPS names
are imported on first use, so a boot that never talks to DPS never loads that codec.

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

from typing import TYPE_CHECKING

from agent.core.wire.codec import (
    DPS_API_VERSION,
    DPS_RESPONSE_FILTER,
    HUB_API_VERSION,
    MAX_MESSAGE_BYTES,
    METHODS_FILTER,
    TWIN_DESIRED_FILTER,
    TWIN_RESPONSE_FILTER,
    c2d_filter,
    dps_username,
    encode_json,
    hub_username,
    is_finite_number,
)
from agent.core.wire.hub import (
    DesiredPatch,
    DeviceMessage,
    HubIncoming,
    MalformedMethodPayload,
    MethodRequest,
    MethodResponse,
    TwinDocument,
    TwinResponse,
    decode_property_bag,
    encode_property_bag,
    format_desired_patch,
    format_method_request,
    format_method_response,
    format_telemetry,
    format_twin_get,
    format_twin_patch_reported,
    format_twin_response,
    parse_c2d,
    parse_desired_patch,
    parse_hub_message,
    parse_method_request,
    parse_method_response,
    parse_telemetry,
    parse_twin_document,
    parse_twin_response,
)

if TYPE_CHECKING:
    from agent.core.wire.dps import (
        ISSUANCE_API_VERSION,
        DpsResponse,
        RegistrationState,
        format_dps_poll,
        format_dps_register,
        format_dps_response,
        parse_dps_response,
    )

#: Loaded on first use (:func:`__getattr__`): a warm boot speaks only to the hub.
_DPS_NAMES = frozenset(
    {
        "ISSUANCE_API_VERSION",
        "DpsResponse",
        "RegistrationState",
        "format_dps_poll",
        "format_dps_register",
        "format_dps_response",
        "parse_dps_response",
    }
)

__all__ = [
    "DPS_API_VERSION",
    "DPS_RESPONSE_FILTER",
    "HUB_API_VERSION",
    "ISSUANCE_API_VERSION",
    "MAX_MESSAGE_BYTES",
    "METHODS_FILTER",
    "TWIN_DESIRED_FILTER",
    "TWIN_RESPONSE_FILTER",
    "DesiredPatch",
    "DeviceMessage",
    "DpsResponse",
    "HubIncoming",
    "MalformedMethodPayload",
    "MethodRequest",
    "MethodResponse",
    "RegistrationState",
    "TwinDocument",
    "TwinResponse",
    "c2d_filter",
    "decode_property_bag",
    "dps_username",
    "encode_json",
    "encode_property_bag",
    "format_desired_patch",
    "format_dps_poll",
    "format_dps_register",
    "format_dps_response",
    "format_method_request",
    "format_method_response",
    "format_telemetry",
    "format_twin_get",
    "format_twin_patch_reported",
    "format_twin_response",
    "hub_username",
    "is_finite_number",
    "parse_c2d",
    "parse_desired_patch",
    "parse_dps_response",
    "parse_hub_message",
    "parse_method_request",
    "parse_method_response",
    "parse_telemetry",
    "parse_twin_document",
    "parse_twin_response",
]


def __getattr__(name: str) -> object:
    """The DPS codec's names, imported when first asked for (PEP 562)."""
    if name in _DPS_NAMES:
        from agent.core.wire import dps

        return getattr(dps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
