"""``sensors scan`` / ``sensors read`` through the real argument parsing."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import pytest

from hal.cli import EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE, main, register_cli


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def test_scan_json() -> None:
    code, out = run("sensors", "scan", "--backend", "mock", "--json")
    assert code == EX_OK
    doc = json.loads(out)
    assert doc["backend"] == "mock" and doc["buses"] == [1]
    assert {(f["address"], f["part"]) for f in doc["found"]} == {
        (0x23, "BH1750"), (0x44, "SHT3x"), (0x45, "SHT4x"),
        (0x48, "TMP102"), (0x76, "BME280"), (0x77, "BMP280"),
    }  # fmt: skip


def test_scan_table_two_buses() -> None:
    code, out = run(
        "sensors", "scan", "--backend", "mock", "--mock-board", "dual", "--bus", "1", "--bus", "3"
    )
    assert code == EX_OK
    lines = out.splitlines()
    assert lines[0].split() == ["BUS", "ADDR", "PART", "DETAIL"]
    assert any(line.split()[:3] == ["3", "0x49", "TMP102"] for line in lines)


def test_read_json_auto() -> None:
    code, out = run("sensors", "read", "--backend", "mock", "--json", "--seed", "3")
    assert code == EX_OK
    sensors = json.loads(out)["sensors"]
    assert len(sensors) == 6
    bme = next(s for s in sensors if s["part"] == "BME280")
    assert set(bme["readings"]) == {"temperature_c", "humidity_pct", "pressure_hpa"}
    assert bme["name"] == "bme280@1:0x76" and bme["bus"] == 1 and bme["address"] == 0x76


def test_read_named_sensors_table() -> None:
    code, out = run(
        "sensors",
        "read",
        "--backend",
        "mock",
        "--sensor",
        "BME280@1:0x76",
        "--sensor",
        "sht40@1:0x45",
    )
    assert code == EX_OK
    rows = [line.split() for line in out.splitlines()[1:]]
    assert {(r[0], r[2], r[4]) for r in rows} == {
        ("bme280@1:0x76", "temperature_c", "degC"),
        ("bme280@1:0x76", "humidity_pct", "%RH"),
        ("bme280@1:0x76", "pressure_hpa", "hPa"),
        ("sht4x@1:0x45", "temperature_c", "degC"),
        ("sht4x@1:0x45", "humidity_pct", "%RH"),
    }


def test_read_with_a_faulty_sensor_reports_it_and_fails() -> None:
    code, out = run(
        "sensors", "read", "--backend", "mock", "--json",
        "--sensor", "BME280@1:0x76", "--sensor", "SHT3x@1:0x44",
        "--mock-fault", "crc@1:0x44",
    )  # fmt: skip
    assert code == EX_FAILURE
    by_name = {s["name"]: s for s in json.loads(out)["sensors"]}
    assert "CRC mismatch" in by_name["sht3x@1:0x44"]["error"]
    assert "readings" in by_name["bme280@1:0x76"]


def test_stuck_bus_scan_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("sensors", "scan", "--backend", "mock", "--mock-fault", "stuck@1")
    assert code == EX_UNAVAILABLE
    assert "ETIMEDOUT" in capsys.readouterr().err


def test_missing_bus_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("sensors", "scan", "--backend", "mock", "--bus", "4")
    assert code == EX_UNAVAILABLE
    assert "has buses [1]" in capsys.readouterr().err


def test_bad_sensor_spec_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run("sensors", "read", "--backend", "mock", "--sensor", "DHT22@1:0x40")
    assert info.value.code == 2  # argparse's usage exit code
    assert "unknown part" in capsys.readouterr().err


def test_mock_fault_needs_the_mock_backend(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("sensors", "scan", "--backend", "smbus", "--mock-fault", "stuck@1")
    assert code == EX_USAGE
    assert "--backend mock" in capsys.readouterr().err


def test_mounts_on_a_parent_cli() -> None:
    parser = argparse.ArgumentParser(prog="device-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run")
    register_cli(sub)
    args = parser.parse_args(["sensors", "scan", "--backend", "mock", "--json"])
    out = io.StringIO()
    args.stdout = out
    assert args.func(args) == EX_OK
    assert json.loads(out.getvalue())["found"]


def test_python_dash_m_hal() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hal",
            "sensors",
            "read",
            "--backend",
            "mock",
            "--sensor",
            "TMP102@1:0x48",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "tmp102@1:0x48" in result.stdout


@pytest.mark.parametrize(
    ("fault", "errno_name"),
    [("nack@1:0x76", "EREMOTEIO"), ("eio@1:0x76", "EIO"), ("remove@1:0x76", "ENXIO")],
)
def test_read_with_each_bus_fault(fault: str, errno_name: str) -> None:
    code, out = run(
        "sensors", "read", "--backend", "mock", "--json",
        "--sensor", "BME280@1:0x76", "--sensor", "TMP102@1:0x48", "--mock-fault", fault,
    )  # fmt: skip
    assert code == EX_FAILURE
    by_name = {s["name"]: s for s in json.loads(out)["sensors"]}
    assert f"{errno_name} " in by_name["bme280@1:0x76"]["error"]
    assert "temperature_c" in by_name["tmp102@1:0x48"]["readings"]


def test_a_fault_aimed_at_no_chip_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("sensors", "read", "--backend", "mock", "--mock-fault", "remove@1:0x10")
    assert code == EX_USAGE
    assert "no chip at i2c-1 0x10" in capsys.readouterr().err


def test_named_and_auto_sensors_are_read_once_each() -> None:
    code, out = run(
        "sensors", "read", "--backend", "mock", "--json",
        "--sensor", "BME280@1:0x76", "--sensor", "auto",
    )  # fmt: skip
    assert code == EX_OK
    sensors = json.loads(out)["sensors"]
    assert sorted((s["bus"], s["address"]) for s in sensors) == [
        (1, 0x23), (1, 0x44), (1, 0x45), (1, 0x48), (1, 0x76), (1, 0x77),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [("scan", "--bus", "250"), ("read", "--sensor", "BME280@250:0x76")],
)
def test_real_backend_without_the_bus_is_unavailable(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run("sensors", *argv, "--backend", "smbus")
    assert code == EX_UNAVAILABLE
    assert "cannot open /dev/i2c-250: ENOENT" in capsys.readouterr().err
    assert out == ""
