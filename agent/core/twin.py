"""Device twin: validate desired properties, build reported ones. Pure functions.

Theory of operation
-------------------
The cloud may change two things through desired properties:

``telemetryIntervalSeconds``
    A number in [:data:`MIN_INTERVAL_S`, :data:`MAX_INTERVAL_S`]; ``null`` restores
    the configured default.
``sensors.<name>.enabled``
    ``true``/``false`` per sensor (``<name>`` as in :func:`twin_key`).

Each is validated on its own and acknowledged in reported properties the IoT Plug
and Play way: ``{"value", "ac", "av", "ad"}`` -- the value in force, a status code
(200 applied, 203 configured default, 400 invalid, 404 unknown sensor), the desired
``$version`` it answers and a description. An invalid value is rejected with the
reason and *not* applied; the rest of the patch still is. Unknown desired keys
belong to other applications and are left alone.

:func:`apply_desired` takes the whole desired section after a twin GET
(``full=True``: an absent key means "default") or a pushed patch (``full=False``:
an absent key means "unchanged"). :func:`build_reported` produces the full
reported document; :func:`reported_patch` turns old and new documents into the
minimal merge patch (``null`` deletes, as the twin's merge semantics say).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from agent.core.text import clip, describe
from agent.core.wire import is_finite_number

#: Longer desired sensor keys are refused without an echo (IoT Hub allows 1 KB names).
MAX_KEY_CHARS = 128
#: At most this many unknown sensor keys are acknowledged (404) per document.
MAX_UNKNOWN_ACKS = 16
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 86_400.0
INTERVAL_KEY = "telemetryIntervalSeconds"
SENSORS_KEY = "sensors"
#: Sensors whose last read failed (not ``errors``: the telemetry has that name, and a
#: Plug and Play model has one namespace for telemetry and properties).
SENSOR_ERRORS_KEY = "sensorErrors"


@dataclass(frozen=True)
class Settings:
    """What the cloud can change, as currently in force."""

    telemetry_interval_s: float
    disabled_sensors: frozenset[str] = frozenset()
    #: Ack objects to report, keyed as in the reported document.
    interval_ack: Mapping[str, object] = field(default_factory=dict)
    sensor_acks: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


def twin_key(sensor_name: str) -> str:
    """A sensor name as a twin property name (no ``.``, ``$``, spaces or control chars)."""
    return "".join("_" if c in ".$ " or ord(c) < 32 else c for c in sensor_name) or "_"


def ack(value: object, code: int, version: int | None, description: str) -> dict[str, object]:
    """A writable-property acknowledgement."""
    return {
        "value": value,
        "ac": code,
        "av": version if version is not None else 0,
        "ad": description,
    }


def validate_interval(value: object) -> float:
    """A telemetry interval in seconds, or ValueError saying what is wrong."""
    if not is_finite_number(value):
        raise ValueError(
            f"must be a number of seconds, got {type(value).__name__} {describe(value)}"
        )
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer too large for a float
        seconds = math.inf
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ValueError(
            f"must be between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g} s, got {describe(value)}"
        )
    return seconds


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True)
class DesiredResult:
    """The settings after a desired document or patch, and what was refused."""

    settings: Settings
    #: Human-readable reasons for every rejected value (also in the acks).
    rejected: tuple[str, ...]


def initial_settings(default_interval_s: float) -> Settings:
    """Settings before any desired properties: the configured default, acknowledged 203."""
    return Settings(
        telemetry_interval_s=default_interval_s,
        interval_ack=ack(_number(default_interval_s), 203, None, "configured default"),
    )


def apply_desired(
    desired: Mapping[str, object],
    *,
    version: int | None,
    current: Settings,
    default_interval_s: float,
    sensors: Sequence[str],
    full: bool,
) -> DesiredResult:
    """Validate and apply desired properties; invalid values are refused, not applied."""
    rejected: list[str] = []
    settings = current
    if INTERVAL_KEY in desired or full:
        raw = desired.get(INTERVAL_KEY)
        if raw is None:
            settings = replace(
                settings,
                telemetry_interval_s=default_interval_s,
                interval_ack=ack(_number(default_interval_s), 203, version, "configured default"),
            )
        else:
            try:
                seconds = validate_interval(raw)
            except ValueError as exc:
                reason = f"{INTERVAL_KEY} {exc}"
                rejected.append(reason)
                value = _number(settings.telemetry_interval_s)
                settings = replace(settings, interval_ack=ack(value, 400, version, reason))
            else:
                settings = replace(
                    settings,
                    telemetry_interval_s=seconds,
                    interval_ack=ack(_number(seconds), 200, version, "applied"),
                )
    if SENSORS_KEY in desired or full:
        settings = _apply_sensors(
            desired.get(SENSORS_KEY),
            version=version,
            settings=settings,
            sensors=sensors,
            full=full,
            rejected=rejected,
        )
    return DesiredResult(settings, tuple(rejected))


def _apply_sensors(
    raw: object,
    *,
    version: int | None,
    settings: Settings,
    sensors: Sequence[str],
    full: bool,
    rejected: list[str],
) -> Settings:
    by_key = {twin_key(name): name for name in sensors}
    disabled = set() if full else set(settings.disabled_sensors)
    acks = {} if full else dict(settings.sensor_acks)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        rejected.append(
            f"{SENSORS_KEY} must be an object of sensor names, got {type(raw).__name__}"
        )
        return settings
    unknown = 0
    for key, entry in raw.items():
        if key.startswith("$"):
            continue
        name = by_key.get(key)
        if name is None:
            known = clip(", ".join(sorted(by_key)))
            reason = f"{SENSORS_KEY}.{clip(key, 64)}: no such sensor (known: {known})"
            rejected.append(reason)
            unknown += 1
            if len(key) <= MAX_KEY_CHARS and unknown <= MAX_UNKNOWN_ACKS:
                acks[key] = ack(None, 404, version, reason)
            continue
        enabled = entry.get("enabled") if isinstance(entry, Mapping) else entry
        if entry is None or (isinstance(entry, Mapping) and enabled is None):
            disabled.discard(name)
            acks[key] = ack(True, 203, version, "enabled by default")
        elif isinstance(enabled, bool):
            (disabled.discard if enabled else disabled.add)(name)
            acks[key] = ack(enabled, 200, version, "applied")
        else:
            reason = f"{SENSORS_KEY}.{key}.enabled must be true or false, got {describe(enabled)}"
            rejected.append(reason)
            acks[key] = ack(name not in disabled, 400, version, reason)
    return replace(settings, disabled_sensors=frozenset(disabled), sensor_acks=acks)


@dataclass(frozen=True)
class SensorInfo:
    """What the twin says about one sensor."""

    name: str
    part: str
    #: quantity -> unit
    units: Mapping[str, str]


#: The reported property with the telemetry buffer's kind and drop counters.
BUFFER_KEY = "telemetryBuffer"


def build_reported(
    *,
    agent_version: str,
    hub: str | None,
    device_id: str | None,
    provisioned_at: str | None,
    last_reprovision_reason: str | None,
    sensors: Sequence[SensorInfo],
    settings: Settings,
    errors: Mapping[str, str],
    telemetry_buffer: Mapping[str, object] | None = None,
    certificate: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The full reported-properties document (``telemetryBuffer`` only if given;
    ``certificate``: the one the hub connection uses, if given)."""
    sensor_doc: dict[str, object] = {}
    for sensor in sensors:
        key = twin_key(sensor.name)
        enabled = sensor.name not in settings.disabled_sensors
        sensor_doc[key] = {
            "part": sensor.part,
            "units": dict(sensor.units),
            "enabled": dict(settings.sensor_acks.get(key, ack(enabled, 203, None, "default"))),
        }
    for key, acknowledgement in settings.sensor_acks.items():
        if key not in sensor_doc:  # e.g. a 404 for a sensor that does not exist
            sensor_doc[key] = {"enabled": dict(acknowledgement)}
    doc: dict[str, object] = {
        "agentVersion": agent_version,
        "hub": hub,
        "deviceId": device_id,
        "provisionedAt": provisioned_at,
        "lastReprovisionReason": last_reprovision_reason,
        SENSORS_KEY: sensor_doc,
        INTERVAL_KEY: dict(settings.interval_ack),
        SENSOR_ERRORS_KEY: {twin_key(k): v for k, v in errors.items()},
    }
    if telemetry_buffer is not None:
        doc[BUFFER_KEY] = dict(telemetry_buffer)
    if certificate is not None:
        doc["certificate"] = dict(certificate)
    return doc


#: From this long before expiry a certificate that nothing renews is warned about.
EXPIRY_WARNING_S = 30 * 86400.0


def certificate_report(
    *, not_before: float, not_after: float, renewal: str, now: float
) -> dict[str, object]:
    """``reported.certificate`` (validFrom, validUntil as Microsoft suggests; renewal:
    ``dps`` or ``none``; a warning when nothing renews it and it expires within 30 days)."""
    from agent.core.clock import utc_iso

    report: dict[str, object] = {
        "validFrom": utc_iso(not_before),
        "validUntil": utc_iso(not_after),
        "renewal": renewal,
    }
    left = not_after - now
    if renewal == "none" and left < EXPIRY_WARNING_S:
        days = max(0, int(left // 86400))
        report["warning"] = f"expires in {days} days and nothing renews it"
    return report


def reported_patch(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, object]:
    """The merge patch that turns ``old`` into ``new`` (removed keys become ``null``)."""
    patch: dict[str, object] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = reported_patch(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
