"""The unit, sysusers.d and tmpfiles.d files, checked by systemd's own tools."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from agent.errors import EX_CONFIG

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd/device-agent.service"
SYSUSERS = REPO / "systemd/device-agent.sysusers.conf"
TMPFILES = REPO / "systemd/device-agent.tmpfiles.conf"
VENV_ENTRY_POINT = REPO / ".venv/bin/device-agent"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (package systemd); cannot check the unit files")
    return path


def directives(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value, in order (units repeat keys like DeviceAllow=)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found[f"{section}.{key.strip()}"].append(value.strip())
    return found


def verify(unit_text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``unit_text``, with ExecStart pointed at a real file.

    verify insists the binary exists; /usr/bin/device-agent is where packages put it,
    the venv's entry point stands in for it here (the line is checked separately).
    """
    assert VENV_ENTRY_POINT.exists(), "the project is not installed in .venv"
    text = unit_text.replace(
        "ExecStart=/usr/bin/device-agent ", f"ExecStart={VENV_ENTRY_POINT} ", 1
    )
    copy = folder / "device-agent.service"
    copy.write_text(text)
    return subprocess.run(
        [tool("systemd-analyze"), "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_bad_value(tmp_path: Path) -> None:
    # systemd-analyze exits 0 on some bad values; any output counts as failure.
    result = verify(UNIT.read_text().replace("Type=notify", "Type=notifyy"), tmp_path)
    assert "notifyy" in result.stdout + result.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    copy = tmp_path / "device-agent.service"
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--threshold=25", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overall exposure level for device-agent.service" in result.stdout


def test_unit_says_what_the_agent_needs() -> None:
    unit = directives(UNIT)
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.ExecStart"] == ["/usr/bin/device-agent run"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.RestartPreventExitStatus"] == [str(EX_CONFIG)]
    assert int(unit["Service.WatchdogSec"][0]) > 30  # more than the 30 s connect timeout
    assert unit["Service.StateDirectory"] == ["device-agent"]
    assert unit["Service.User"] == ["device-agent"]
    assert unit["Service.SupplementaryGroups"] == ["i2c gpio"]
    assert unit["Service.DeviceAllow"] == ["char-i2c rw", "char-gpiochip rw"]
    assert unit["Service.DevicePolicy"] == ["closed"]
    assert unit["Service.CapabilityBoundingSet"] == [""]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
    }.items():
        assert unit[f"Service.{key}"] == [value], key


def test_sysusers_creates_the_user_and_hardware_groups(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in _lines(tmp_path / "etc/passwd")}
    groups = {line.split(":")[0]: line.split(":") for line in _lines(tmp_path / "etc/group")}
    assert passwd["device-agent"][5:] == ["/var/lib/device-agent", "/usr/sbin/nologin"]
    assert "device-agent" in groups["i2c"][3].split(",")
    assert "device-agent" in groups["gpio"][3].split(",")


def test_tmpfiles_make_private_directories(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    sysusers = subprocess.run(
        [tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sysusers.returncode == 0, sysusers.stderr
    result = subprocess.run(
        [tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    uid = _id_of(tmp_path / "etc/passwd", "device-agent")
    gid = _id_of(tmp_path / "etc/group", "device-agent")
    config_dir = (tmp_path / "etc/device-agent").stat()
    state_dir = (tmp_path / "var/lib/device-agent").stat()
    assert (oct(config_dir.st_mode & 0o777), config_dir.st_uid, config_dir.st_gid) == (
        "0o750",
        0,
        gid,
    )
    assert (oct(state_dir.st_mode & 0o777), state_dir.st_uid, state_dir.st_gid) == (
        "0o700",
        uid,
        gid,
    )


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def _id_of(path: Path, name: str) -> int:
    """The numeric id of ``name`` in a passwd or group file."""
    for line in _lines(path):
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in {path}")
