"""Twin semantics that mutation testing found unpinned (issue #14).

A full desired document and a pushed patch differ exactly in what an *absent* key
means (default vs unchanged), for the interval and for the disabled sensors; a
``null`` sensor entry means "back to the default (enabled)"; the interval limits are
inclusive; and every acknowledgement and reason says precisely what happened.
"""

from __future__ import annotations

import pytest

from agent.core.twin import (
    INTERVAL_KEY,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    SENSORS_KEY,
    DesiredResult,
    SensorInfo,
    Settings,
    ack,
    apply_desired,
    build_reported,
    initial_settings,
    reported_patch,
    twin_key,
    validate_interval,
)

SENSORS = ["bme280@1:0x76", "bh1750@1:0x23"]
BME, BH = (twin_key(s) for s in SENSORS)
DEFAULT = initial_settings(60.0)


def apply(
    desired: dict[str, object], *, full: bool, current: Settings = DEFAULT, version: int = 3
) -> DesiredResult:
    return apply_desired(
        desired,
        version=version,
        current=current,
        default_interval_s=60.0,
        sensors=SENSORS,
        full=full,
    )


def disabled_both() -> Settings:
    return apply(
        {SENSORS_KEY: {BME: {"enabled": False}, BH: {"enabled": False}}}, full=False
    ).settings


def test_initial_settings_acknowledge_the_configured_default() -> None:
    settings = initial_settings(2.5)
    assert settings.telemetry_interval_s == 2.5
    assert settings.disabled_sensors == frozenset()
    assert settings.interval_ack == {"value": 2.5, "ac": 203, "av": 0, "ad": "configured default"}
    assert initial_settings(60.0).interval_ack["value"] == 60  # whole seconds as an int
    assert isinstance(initial_settings(60.0).interval_ack["value"], int)


def test_ack_without_a_version_answers_version_zero() -> None:
    assert ack(True, 200, None, "x") == {"value": True, "ac": 200, "av": 0, "ad": "x"}
    assert ack(1, 400, 9, "why") == {"value": 1, "ac": 400, "av": 9, "ad": "why"}


def test_a_full_document_without_sensors_enables_every_sensor_again() -> None:
    result = apply({}, full=True, current=disabled_both(), version=12)
    assert result.settings.disabled_sensors == frozenset()
    assert result.settings.sensor_acks == {}  # the old acks go with the old document
    assert result.rejected == ()


def test_a_patch_without_sensors_keeps_them_disabled() -> None:
    before = disabled_both()
    result = apply({INTERVAL_KEY: 10}, full=False, current=before, version=12)
    assert result.settings.disabled_sensors == frozenset(SENSORS)
    assert result.settings.sensor_acks == before.sensor_acks


def test_a_full_document_naming_one_sensor_resets_the_other() -> None:
    result = apply({SENSORS_KEY: {BH: {"enabled": False}}}, full=True, current=disabled_both())
    assert result.settings.disabled_sensors == frozenset({"bh1750@1:0x23"})
    assert set(result.settings.sensor_acks) == {BH}


def test_a_patch_naming_one_sensor_leaves_the_other() -> None:
    result = apply({SENSORS_KEY: {BH: {"enabled": True}}}, full=False, current=disabled_both())
    assert result.settings.disabled_sensors == frozenset({"bme280@1:0x76"})
    assert result.settings.sensor_acks[BH] == {"value": True, "ac": 200, "av": 3, "ad": "applied"}
    assert result.settings.sensor_acks[BME]["value"] is False  # the earlier ack stays


def test_a_full_document_without_the_interval_restores_the_default() -> None:
    changed = apply({INTERVAL_KEY: 5}, full=False).settings
    result = apply({}, full=True, current=changed, version=4)
    assert result.settings.telemetry_interval_s == 60.0
    assert result.settings.interval_ack == {
        "value": 60, "ac": 203, "av": 4, "ad": "configured default"
    }  # fmt: skip


def test_a_patch_without_the_interval_keeps_it() -> None:
    changed = apply({INTERVAL_KEY: 5}, full=False).settings
    result = apply({SENSORS_KEY: {}}, full=False, current=changed, version=4)
    assert result.settings.telemetry_interval_s == 5.0
    assert result.settings.interval_ack == changed.interval_ack


@pytest.mark.parametrize("full", [False, True])
def test_a_null_sensor_entry_enables_it_by_default(full: bool) -> None:
    result = apply({SENSORS_KEY: {BME: None}}, full=full, current=disabled_both(), version=5)
    assert "bme280@1:0x76" not in result.settings.disabled_sensors
    assert result.settings.sensor_acks[BME] == {
        "value": True, "ac": 203, "av": 5, "ad": "enabled by default"
    }  # fmt: skip
    assert ("bh1750@1:0x23" in result.settings.disabled_sensors) is not full
    assert result.rejected == ()


def test_a_null_enabled_field_also_means_the_default() -> None:
    result = apply({SENSORS_KEY: {BME: {"enabled": None}}}, full=False, current=disabled_both())
    assert "bme280@1:0x76" not in result.settings.disabled_sensors
    assert result.settings.sensor_acks[BME]["ac"] == 203


def test_a_bare_boolean_entry_is_accepted() -> None:
    result = apply({SENSORS_KEY: {BME: False}}, full=False)
    assert result.settings.disabled_sensors == frozenset({"bme280@1:0x76"})
    assert result.settings.sensor_acks[BME]["ac"] == 200


def test_a_null_sensors_object_in_a_patch_enables_nothing_and_disables_nothing() -> None:
    before = disabled_both()
    result = apply({SENSORS_KEY: None}, full=False, current=before)
    assert result.settings.disabled_sensors == before.disabled_sensors
    assert result.rejected == ()


def test_metadata_keys_in_sensors_are_ignored() -> None:
    result = apply({SENSORS_KEY: {"$version": 4, BME: {"enabled": False}}}, full=False)
    assert set(result.settings.sensor_acks) == {BME}
    assert result.rejected == ()


def test_unknown_sensor_is_acknowledged_404_with_the_known_names() -> None:
    result = apply({SENSORS_KEY: {"nope": {"enabled": False}}}, full=False, version=6)
    reason = f"sensors.nope: no such sensor (known: {BH}, {BME})"
    assert result.rejected == (reason,)
    assert result.settings.sensor_acks["nope"] == {"value": None, "ac": 404, "av": 6, "ad": reason}
    assert result.settings.disabled_sensors == frozenset()


def test_an_invalid_enabled_value_keeps_the_state_in_force() -> None:
    before = disabled_both()
    result = apply({SENSORS_KEY: {BME: {"enabled": "no"}}}, full=False, current=before, version=8)
    reason = f"sensors.{BME}.enabled must be true or false, got 'no'"
    assert result.rejected == (reason,)
    assert result.settings.sensor_acks[BME] == {"value": False, "ac": 400, "av": 8, "ad": reason}
    assert result.settings.disabled_sensors == before.disabled_sensors
    enabled = apply({SENSORS_KEY: {BME: {"enabled": 1}}}, full=False)
    assert enabled.settings.sensor_acks[BME]["value"] is True  # still enabled, and says so


def test_sensors_not_an_object_is_refused_and_nothing_changes() -> None:
    before = disabled_both()
    result = apply({SENSORS_KEY: ["x"]}, full=True, current=before)
    assert result.rejected == ("sensors must be an object of sensor names, got list",)
    assert result.settings.disabled_sensors == before.disabled_sensors


@pytest.mark.parametrize("seconds", [MIN_INTERVAL_S, MAX_INTERVAL_S, 1, 86_400, 1.5])
def test_interval_limits_are_inclusive(seconds: float) -> None:
    assert validate_interval(seconds) == float(seconds)
    result = apply({INTERVAL_KEY: seconds}, full=False, version=2)
    assert result.settings.telemetry_interval_s == float(seconds)
    assert result.settings.interval_ack["ac"] == 200
    assert result.rejected == ()


@pytest.mark.parametrize("seconds", [0.999, 86_400.001, 0, -1])
def test_just_outside_the_limits_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError) as info:
        validate_interval(seconds)
    assert str(info.value) == f"must be between 1 and 86400 s, got {seconds}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10", "must be a number of seconds, got str '10'"),
        (True, "must be a number of seconds, got bool True"),
        (float("nan"), "must be a number of seconds, got float nan"),
    ],
)
def test_interval_that_is_not_a_number(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_interval(value)
    assert str(info.value) == message


def test_a_refused_interval_reports_the_value_in_force_and_why() -> None:
    changed = apply({INTERVAL_KEY: 5}, full=False).settings
    result = apply({INTERVAL_KEY: 0}, full=False, current=changed, version=9)
    reason = "telemetryIntervalSeconds must be between 1 and 86400 s, got 0"
    assert result.rejected == (reason,)
    assert result.settings.telemetry_interval_s == 5.0
    assert result.settings.interval_ack == {"value": 5, "ac": 400, "av": 9, "ad": reason}


def test_a_fractional_interval_is_acknowledged_as_given() -> None:
    result = apply({INTERVAL_KEY: 2.5}, full=False, version=2)
    assert result.settings.interval_ack == {"value": 2.5, "ac": 200, "av": 2, "ad": "applied"}


def test_twin_key_replaces_each_forbidden_character() -> None:
    assert twin_key("a.b$c d\te") == "a_b_c_d_e"
    assert twin_key("") == "_"
    assert twin_key("plain-name_1") == "plain-name_1"
    assert twin_key("\x1f") == "_" and twin_key("\x20") == "_" and twin_key("!") == "!"


def test_reported_document_for_enabled_disabled_and_unknown_sensors() -> None:
    settings = apply(
        {SENSORS_KEY: {BH: {"enabled": False}, "ghost": {"enabled": True}}}, full=False, version=4
    ).settings
    doc = build_reported(
        agent_version="1.2.3",
        hub="hub.example",
        device_id="dev",
        provisioned_at="2026-12-01T00:00:00Z",
        last_reprovision_reason="moved",
        sensors=[
            SensorInfo("bme280@1:0x76", "BME280", {"temperature_c": "degC"}),
            SensorInfo("bh1750@1:0x23", "BH1750", {"illuminance_lux": "lx"}),
        ],
        settings=settings,
        errors={"bme280@1:0x76": "NACK"},
    )
    assert doc["agentVersion"] == "1.2.3" and doc["hub"] == "hub.example"
    assert doc["deviceId"] == "dev" and doc["provisionedAt"] == "2026-12-01T00:00:00Z"
    assert doc["lastReprovisionReason"] == "moved"
    sensors = doc[SENSORS_KEY]
    assert isinstance(sensors, dict)
    assert sensors[BME] == {
        "part": "BME280",
        "units": {"temperature_c": "degC"},
        "enabled": {"value": True, "ac": 203, "av": 0, "ad": "default"},
    }
    assert sensors[BH]["enabled"] == {"value": False, "ac": 200, "av": 4, "ad": "applied"}
    assert sensors["ghost"] == {"enabled": settings.sensor_acks["ghost"]}
    assert doc[INTERVAL_KEY] == settings.interval_ack
    assert doc["sensorErrors"] == {BME: "NACK"}


def test_reported_patch_sends_only_what_changed() -> None:
    old = {"a": 1, "b": {"x": 1, "y": 2}, "c": 3, "d": {"k": 1}}
    new = {"a": 1, "b": {"x": 1, "y": 5}, "e": None, "d": {"k": 1}}
    assert reported_patch(old, new) == {"b": {"y": 5}, "e": None, "c": None}
    assert reported_patch(new, new) == {}
    assert reported_patch({"a": {"x": 1}}, {"a": 2}) == {"a": 2}
    assert reported_patch({"a": 2}, {"a": {"x": 1}}) == {"a": {"x": 1}}
    assert reported_patch({}, {"a": None}) == {"a": None}  # new key, even when null


def test_an_unknown_sensor_does_not_stop_the_rest_of_the_patch() -> None:
    result = apply({SENSORS_KEY: {"nope": {"enabled": True}, BME: {"enabled": False}}}, full=False)
    assert result.settings.disabled_sensors == frozenset({"bme280@1:0x76"})
    assert set(result.settings.sensor_acks) == {"nope", BME}


def test_twin_key_keeps_ordinary_letters() -> None:
    assert twin_key("XMAS-x") == "XMAS-x"


def test_certificate_report_warns_only_within_30_days_when_nothing_renews() -> None:
    from agent.core.twin import EXPIRY_WARNING_S, certificate_report

    now = 1_800_000_000.0
    report = certificate_report(
        not_before=0.0, not_after=now + 86_400 * 2.5, renewal="none", now=now
    )
    assert report == {
        "validFrom": "1970-01-01T00:00:00.000Z",
        "validUntil": "2027-01-17T20:00:00.000Z",
        "renewal": "none",
        "warning": "expires in 2 days and nothing renews it",
    }
    at_limit = certificate_report(
        not_before=0.0, not_after=now + EXPIRY_WARNING_S, renewal="none", now=now
    )
    assert "warning" not in at_limit
    expired = certificate_report(not_before=0.0, not_after=now - 10, renewal="none", now=now)
    assert expired["warning"] == "expires in 0 days and nothing renews it"
    soon = certificate_report(not_before=0.0, not_after=now + 3600, renewal="none", now=now)
    assert soon["warning"] == "expires in 0 days and nothing renews it"
    renewed = certificate_report(not_before=0.0, not_after=now + 10, renewal="dps", now=now)
    assert "warning" not in renewed


def test_reported_document_carries_buffer_and_certificate_when_given() -> None:
    kwargs: dict[str, object] = dict(
        agent_version="1", hub=None, device_id=None, provisioned_at=None,
        last_reprovision_reason=None, sensors=[], settings=DEFAULT, errors={},
    )  # fmt: skip
    plain = build_reported(**kwargs)  # type: ignore[arg-type]
    assert "telemetryBuffer" not in plain and "certificate" not in plain
    full = build_reported(
        **kwargs, telemetry_buffer={"kind": "sqlite"}, certificate={"renewal": "dps"}
    )  # type: ignore[arg-type]
    assert full["telemetryBuffer"] == {"kind": "sqlite"} and full["certificate"] == {
        "renewal": "dps"
    }
