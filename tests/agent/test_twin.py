"""Twin desired-property validation, acknowledgements and reported documents."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.twin import (
    MAX_INTERVAL_S,
    DesiredResult,
    SensorInfo,
    Settings,
    apply_desired,
    build_reported,
    initial_settings,
    reported_patch,
    twin_key,
    validate_interval,
)

SENSORS = ["bme280@1:0x76", "bh1750@1:0x23"]
DEFAULT = initial_settings(60.0)


def patch(
    desired: dict[str, object], current: Settings = DEFAULT, version: int = 7
) -> DesiredResult:
    return apply_desired(
        desired,
        version=version,
        current=current,
        default_interval_s=60.0,
        sensors=SENSORS,
        full=False,
    )


def test_interval_applied_and_acknowledged() -> None:
    result = patch({"telemetryIntervalSeconds": 5})
    assert result.settings.telemetry_interval_s == 5.0
    assert result.settings.interval_ack == {"value": 5, "ac": 200, "av": 7, "ad": "applied"}
    assert result.rejected == ()


@pytest.mark.parametrize("bad", [0, -1, MAX_INTERVAL_S + 1, "10", True, [5], {"s": 1}])
def test_invalid_interval_rejected_with_reason_not_applied(bad: object) -> None:
    result = patch({"telemetryIntervalSeconds": bad})
    assert result.settings.telemetry_interval_s == 60.0
    ack = result.settings.interval_ack
    assert ack["ac"] == 400 and ack["av"] == 7 and ack["value"] == 60
    assert "telemetryIntervalSeconds" in str(ack["ad"])
    assert result.rejected


def test_null_interval_restores_the_default() -> None:
    changed = patch({"telemetryIntervalSeconds": 5}).settings
    result = patch({"telemetryIntervalSeconds": None}, changed, version=8)
    assert result.settings.telemetry_interval_s == 60.0
    assert result.settings.interval_ack["ac"] == 203


def test_full_document_without_interval_means_default() -> None:
    changed = patch({"telemetryIntervalSeconds": 5}).settings
    result = apply_desired(
        {"$version": 9},
        version=9,
        current=changed,
        default_interval_s=60.0,
        sensors=SENSORS,
        full=True,
    )
    assert result.settings.telemetry_interval_s == 60.0


def test_patch_without_interval_leaves_it() -> None:
    changed = patch({"telemetryIntervalSeconds": 5}).settings
    assert patch({"other": 1}, changed).settings.telemetry_interval_s == 5.0


def test_per_sensor_enable() -> None:
    result = patch({"sensors": {"bh1750@1:0x23": {"enabled": False}}})
    assert result.settings.disabled_sensors == {"bh1750@1:0x23"}
    assert result.settings.sensor_acks["bh1750@1:0x23"]["ac"] == 200
    again = patch({"sensors": {"bh1750@1:0x23": {"enabled": True}}}, result.settings, version=8)
    assert again.settings.disabled_sensors == frozenset()


@pytest.mark.parametrize(
    ("sensors", "code"),
    [
        ({"nope": {"enabled": False}}, 404),
        ({"bme280@1:0x76": {"enabled": "no"}}, 400),
        ({"bme280@1:0x76": {"enabled": 0}}, 400),
    ],
)
def test_bad_sensor_entries_are_refused(sensors: dict[str, object], code: int) -> None:
    result = patch({"sensors": sensors})
    assert result.settings.disabled_sensors == frozenset()
    (key,) = sensors
    assert result.settings.sensor_acks[key]["ac"] == code
    assert result.rejected


def test_sensors_not_an_object_is_refused() -> None:
    result = patch({"sensors": 3, "telemetryIntervalSeconds": 10})
    assert result.rejected and "sensors" in result.rejected[0]
    assert result.settings.telemetry_interval_s == 10.0  # the valid part still applies


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    desired=st.dictionaries(
        st.sampled_from(["telemetryIntervalSeconds", "sensors", "x"]) | st.text(max_size=5),
        json_values,
        max_size=4,
    ),
    full=st.booleans(),
)
def test_garbage_desired_never_raises_and_keeps_interval_valid(
    desired: dict[str, object], full: bool
) -> None:
    result = apply_desired(
        desired, version=1, current=DEFAULT, default_interval_s=60.0, sensors=SENSORS, full=full
    )
    assert 1.0 <= result.settings.telemetry_interval_s <= MAX_INTERVAL_S
    assert result.settings.disabled_sensors <= set(SENSORS)


def test_validate_interval() -> None:
    assert validate_interval(2) == 2.0
    with pytest.raises(ValueError, match="between"):
        validate_interval(0.5)
    with pytest.raises(ValueError, match="number"):
        validate_interval(float("nan"))


def test_twin_key_strips_forbidden_characters() -> None:
    assert twin_key("a.b$c d") == "a_b_c_d"
    assert twin_key("bme280@1:0x76") == "bme280@1:0x76"


def test_build_reported_and_patch() -> None:
    settings = patch({"telemetryIntervalSeconds": 5}).settings
    sensors = [SensorInfo("bme280@1:0x76", "BME280", {"temperature_c": "degC"})]
    doc = build_reported(
        agent_version="0.1.0",
        hub="hub-a.local",
        device_id="dev-1",
        provisioned_at="2026-01-01T00:00:00Z",
        last_reprovision_reason="first boot",
        sensors=sensors,
        settings=settings,
        errors={"bh1750@1:0x23": "NACK"},
    )
    assert doc["agentVersion"] == "0.1.0" and doc["hub"] == "hub-a.local"
    assert doc["telemetryIntervalSeconds"] == {"value": 5, "ac": 200, "av": 7, "ad": "applied"}
    assert doc["sensors"] == {
        "bme280@1:0x76": {
            "part": "BME280",
            "units": {"temperature_c": "degC"},
            "enabled": {"value": True, "ac": 203, "av": 0, "ad": "default"},
        }
    }
    assert doc["sensorErrors"] == {"bh1750@1:0x23": "NACK"}
    cleared = dict(doc, sensorErrors={})
    assert reported_patch(doc, cleared) == {"sensorErrors": {"bh1750@1:0x23": None}}
    assert reported_patch(doc, doc) == {}
    assert reported_patch({}, doc) == doc


def test_certificate_report_warns_only_when_nothing_renews_a_certificate_near_expiry() -> None:
    from agent.core.twin import certificate_report

    day = 86400.0
    soon = certificate_report(not_before=0.0, not_after=40 * day, renewal="none", now=20 * day)
    assert soon == {
        "validFrom": "1970-01-01T00:00:00.000Z",
        "validUntil": "1970-02-10T00:00:00.000Z",
        "renewal": "none",
        "warning": "expires in 20 days and nothing renews it",
    }
    renewed = certificate_report(not_before=0.0, not_after=40 * day, renewal="dps", now=39 * day)
    assert "warning" not in renewed
    far = certificate_report(not_before=0.0, not_after=400 * day, renewal="none", now=day)
    assert "warning" not in far
