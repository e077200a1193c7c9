"""Direct methods: validate a request, answer it, say what the daemon should then do.

Theory of operation
-------------------
:func:`dispatch` is pure: a decoded :class:`~agent.core.wire.MethodRequest` plus what it
needs to know goes in; a :class:`MethodReply` (status, JSON payload, and an optional
effect for the daemon to carry out *after* the reply is sent) comes out. It never
raises and never blocks: an unknown method is 404, a bad payload 400 with a message,
a failure inside a handler 500.

``reprovision``       ``{}`` / ``null`` / ``{"force": bool}`` -> 202, then the daemon
                      disconnects and registers with DPS. Declined (429) while the
                      reprovisioning budget is spent unless forced.
``getStatus``         -> 200 with the lifecycle state, hub, uptime, last telemetry,
                      sensors and errors.
``setTelemetryInterval`` ``{"seconds": n}`` -> 200, applied at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.core.text import CLIP_CHARS, clip, describe
from agent.core.twin import validate_interval
from agent.core.wire import MethodRequest


@dataclass(frozen=True)
class Reprovision:
    """Register with DPS again once the reply is out."""

    force: bool


@dataclass(frozen=True)
class SetTelemetryInterval:
    """Use a new telemetry interval."""

    seconds: float


Effect = Reprovision | SetTelemetryInterval


@dataclass(frozen=True)
class MethodReply:
    """What to answer, and what to do afterwards."""

    status: int
    payload: object
    effect: Effect | None = None


def _error(status: int, message: str) -> MethodReply:
    return MethodReply(status, {"message": message})


def _object_payload(payload: object, name: str) -> Mapping[str, object]:
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise ValueError(f"{name}: payload must be a JSON object, got {type(payload).__name__}")
    return payload


def _reprovision(payload: object, budget_allows: bool, budget_message: str) -> MethodReply:
    args = _object_payload(payload, "reprovision")
    unknown = set(args) - {"force"}
    if unknown:
        raise ValueError(
            f"reprovision: unknown field(s) {describe(sorted(unknown))}; only 'force' is allowed"
        )
    force = args.get("force", False)
    if not isinstance(force, bool):
        raise ValueError(f"reprovision: 'force' must be true or false, got {describe(force)}")
    if not force and not budget_allows:
        return _error(429, f'{budget_message}; pass {{"force": true}} to override')
    return MethodReply(202, {"message": "reprovisioning", "force": force}, Reprovision(force))


def _set_interval(payload: object) -> MethodReply:
    args = _object_payload(payload, "setTelemetryInterval")
    if set(args) != {"seconds"}:
        raise ValueError('setTelemetryInterval: payload must be {"seconds": n}')
    try:
        seconds = validate_interval(args["seconds"])
    except ValueError as exc:
        raise ValueError(f"setTelemetryInterval: seconds {exc}") from exc
    shown = int(seconds) if seconds.is_integer() else seconds
    return MethodReply(200, {"telemetryIntervalSeconds": shown}, SetTelemetryInterval(seconds))


KNOWN_METHODS = ("getStatus", "reprovision", "setTelemetryInterval")


def dispatch(
    request: MethodRequest,
    *,
    status: Callable[[], Mapping[str, object]],
    budget_allows: bool,
    budget_message: str = "reprovisioning budget spent",
) -> MethodReply:
    """Answer one method call. Never raises."""
    try:
        match request.name:
            case "reprovision":
                return _reprovision(request.payload, budget_allows, budget_message)
            case "getStatus":
                _object_payload(request.payload, "getStatus")
                return MethodReply(200, dict(status()))
            case "setTelemetryInterval":
                return _set_interval(request.payload)
            case _:
                known = ", ".join(KNOWN_METHODS)
                return _error(404, f"unknown method {clip(request.name, 64)!r}; known: {known}")
    except ValueError as exc:
        return _error(400, clip(exc, 2 * CLIP_CHARS))
    except Exception as exc:  # a handler bug must not crash the daemon
        return _error(500, f"{clip(request.name, 64)} failed: {type(exc).__name__}: {clip(exc)}")


def malformed(problem: str) -> MethodReply:
    """The reply to a request whose payload was not JSON."""
    return _error(400, f"payload is not JSON: {problem}")
