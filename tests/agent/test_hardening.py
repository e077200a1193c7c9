"""Inputs from the cloud and the disk that used to crash, hang, forge or flood (issue #9)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from agent.config import load_config
from agent.core import wire
from agent.core.methods import dispatch
from agent.core.provisioning import (
    Assigned,
    DpsConnected,
    DpsMessage,
    DpsSubscribed,
    Failed,
    Registration,
    hub_allowed,
)
from agent.core.text import CLIP_CHARS, clip, describe
from agent.core.twin import apply_desired, initial_settings
from agent.errors import EX_CONFIG, ConfigError, likely_causes
from agent.fileio import FileRefusedError, read_small_file
from agent.runtime.logs import setup_logging
from agent.store.state import IdentityFingerprint, StateStore
from tests.support.fakeclock import FakeClock

HUGE = 10**400  # the issue's `1` followed by 400 zeros
ROOT = Path(__file__).resolve().parents[2]


# --- values from the cloud ------------------------------------------------------------------


@pytest.mark.parametrize("value", [HUGE, -HUGE, "10", [5], {"s": 5}, True, 0, 1e300])
def test_a_bad_interval_is_a_400_ack_for_that_property_only(value: object) -> None:
    desired = {"telemetryIntervalSeconds": value, "sensors": {"bme280@1:0x76": False}}
    result = apply_desired(
        desired,
        version=7,
        current=initial_settings(60.0),
        default_interval_s=60.0,
        sensors=["bme280@1:0x76"],
        full=True,
    )
    settings = result.settings
    assert settings.interval_ack["ac"] == 400
    assert settings.interval_ack["value"] == 60 and settings.telemetry_interval_s == 60.0
    assert len(str(settings.interval_ack["ad"])) < 2 * CLIP_CHARS  # no 400-digit echo
    assert settings.disabled_sensors == {"bme280@1:0x76"}  # the rest still applied


@pytest.mark.parametrize("seconds", [HUGE, float("nan"), "5", None])
def test_a_bad_interval_by_method_is_400_not_500(seconds: object) -> None:
    request = wire.MethodRequest("setTelemetryInterval", "1", {"seconds": seconds})
    reply = dispatch(request, status=dict, budget_allows=True)
    assert reply.status == 400, reply.payload
    assert len(str(reply.payload)) < 3 * CLIP_CHARS


def test_huge_unknown_sensor_keys_are_refused_without_an_echo() -> None:
    sensors = {f"{'x' * 5000}{n}": True for n in range(100)}
    result = apply_desired(
        {"sensors": sensors},
        version=1,
        current=initial_settings(60.0),
        default_interval_s=60.0,
        sensors=["bme280@1:0x76"],
        full=False,
    )
    assert result.settings.sensor_acks == {}  # nothing 5 KB long goes into the twin
    assert all(len(reason) < 2 * CLIP_CHARS + 100 for reason in result.rejected)


def test_an_unknown_method_with_a_newline_and_a_huge_name_is_answered_bounded() -> None:
    name = "getStatus\nINFO agent: forged" + "x" * 10_000
    reply = dispatch(wire.MethodRequest(name, "1", None), status=dict, budget_allows=True)
    assert reply.status == 404
    assert "\n" not in str(reply.payload) and len(str(reply.payload)) < 3 * CLIP_CHARS


def test_clip_and_describe_escape_and_bound() -> None:
    assert clip("a\nb\r\u2028c\x1b") == "a\\nb\\r\\u2028c\\x1b"
    assert clip("y" * 1000).endswith("... (1000 chars)") and len(clip("y" * 1000)) < 230
    assert describe(HUGE) == "an integer of about 401 digits"
    assert "a string of 300000 chars" in describe("z" * 300_000)


def test_log_lines_cannot_be_forged_but_tracebacks_keep_their_lines() -> None:
    out = StringIO()
    setup_logging("INFO", stream=out, environ={})
    log = logging.getLogger("agent.test.hardening")
    log.warning("method %s -> 404", "x\n2026-01-01 00:00:00,000 ERROR   agent: forged")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert "forged" in lines[0] and not any(line.startswith("2026-01-01") for line in lines)
    assert lines[2] == "Traceback (most recent call last):"


# --- DPS and the hubs it names ----------------------------------------------------------------


def registration(suffixes: tuple[str, ...]) -> Registration:
    import random

    reg = Registration("dev-1", None, rng=random.Random(1), allowed_hub_suffixes=suffixes)
    reg.handle(DpsConnected())
    reg.handle(DpsSubscribed((1,)))
    return reg


def assigned_answer(reg: Registration, hub: str) -> list[object]:
    rid = reg._outstanding_rid
    topic, payload = wire.format_dps_response(
        200,
        rid or "",
        {
            "operationId": "op",
            "status": "assigned",
            "registrationState": {"assignedHub": hub, "deviceId": "dev-1", "status": "assigned"},
        },
    )
    return list(reg.handle(DpsMessage(topic, payload)))


@pytest.mark.parametrize(
    ("hub", "allowed"),
    [
        ("contoso.azure-devices.net", True),
        ("CONTOSO.Azure-Devices.NET", True),
        ("fleet.azure-devices.cn", True),
        ("fleet.azure-devices.us", True),
        ("azure-devices.net", False),  # the suffix itself is no hub
        ("evil-azure-devices.net", False),
        ("contoso.azure-devices.net.evil.example", False),
        ("127.0.0.3", False),
    ],
)
def test_the_assigned_hub_must_be_in_the_allowed_suffixes(hub: str, allowed: bool) -> None:
    from agent.config import AZURE_HUB_SUFFIXES

    assert hub_allowed(hub, AZURE_HUB_SUFFIXES) is allowed
    outcome = [a for a in assigned_answer(registration(AZURE_HUB_SUFFIXES), hub)]
    if allowed:
        assert any(isinstance(a, Assigned) for a in outcome)
    else:
        (failed,) = [a for a in outcome if isinstance(a, Failed)]
        assert failed.rejected and "allowed_hub_suffixes" in str(failed.error)


def test_devcloud_style_hosts_are_allowed_when_listed() -> None:
    assert hub_allowed("127.0.0.3", ("127.0.0.3", "127.0.0.4"))
    assert not hub_allowed("127.0.0.33", ("127.0.0.3",))


def test_connack_5_and_dps_401_are_explained() -> None:
    assert "disabled or deleted" in likely_causes("hub", 5)
    assert "CN is not the registration id" in likely_causes("DPS", 5)
    from agent.errors import ConnectionRefusedByServer

    assert "enrollment" in str(ConnectionRefusedByServer(5, "DPS"))


# --- files on the disk ------------------------------------------------------------------------


def test_a_fifo_and_a_device_and_a_huge_file_are_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileRefusedError, match="FIFO"):
        read_small_file(fifo)  # returns at once: no writer needed
    with pytest.raises(FileRefusedError, match="not a regular file"):
        read_small_file(Path("/dev/zero"))
    huge = tmp_path / "huge"
    with huge.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(FileRefusedError, match="more than"):
        read_small_file(huge)


@pytest.mark.parametrize("kind", ["fifo", "zero", "huge"])
def test_such_a_config_is_exit_78_naming_the_file_quickly(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "agent.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        with path.open("wb") as handle:
            handle.truncate(100 * 1024 * 1024)
    else:
        path = Path("/dev/zero")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(path), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=30,  # a FIFO used to hang here
        check=False,
    )
    assert result.returncode == EX_CONFIG, result.stderr
    assert str(path) in result.stderr + result.stdout
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr


def test_a_huge_state_file_is_set_aside_without_reading_it(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with state.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    fingerprint = IdentityFingerprint("dps", "0ne00000DEV", "dev-1", "AB")
    store = StateStore(tmp_path, fingerprint, clock=FakeClock())
    assert store.load() is None
    assert store.discard_reason is not None and "more than" in store.discard_reason
    assert list(tmp_path.glob("state.json.corrupt-*"))


def test_duplicate_sensor_names_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        """
[identity]
cert_chain_path = "c.pem"
key_path = "k.pem"
[dps]
id_scope = "0ne00000DEV"
[hal]
backend = "mock"
sensors = [
  {part = "BME280", bus = 1, address = 0x76, name = "room"},
  {part = "SHT4x", bus = 1, address = 0x44, name = "room"},
]
"""
    )
    with pytest.raises(
        ConfigError, match=r"hal\.sensors\[1\]\.name.*also the name of sensors\[0\]"
    ):
        load_config(path)


def test_allowed_hub_suffixes_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    base = '[identity]\ncert_chain_path = "c"\nkey_path = "k"\n[hal]\nbackend = "mock"\n'
    path.write_text(base + '[dps]\nid_scope = "0ne00000DEV"\nallowed_hub_suffixes = ["a b"]\n')
    with pytest.raises(ConfigError, match=r"dps\.allowed_hub_suffixes\[0\]"):
        load_config(path)
    path.write_text(base + '[dps]\nid_scope = "0ne00000DEV"\nallowed_hub_suffixes = []\n')
    with pytest.raises(ConfigError, match=r"dps\.allowed_hub_suffixes"):
        load_config(path)
    path.write_text(base + '[dps]\nid_scope = "0ne00000DEV"\n')
    assert ".azure-devices.us" in load_config(path).dps.allowed_hub_suffixes
