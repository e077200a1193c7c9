"""Config files the agent process is started with: anything at all, and odd files.

``tests/agent/test_config.py`` fuzzes the loader in-process for volume; here the real
``device-agent run`` process gets generated TOML documents and files that are not
regular or are huge. Every one ends as a running daemon (stopped with SIGTERM, exit 0)
or as exit 78 naming the file, quickly, without a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DEVICE_AGENT = [sys.executable, "-m", "agent"]
EX_CONFIG = 78
#: A config is read at start: a bad one must be refused well within this.
REFUSED_WITHIN_S = 5.0

SECTIONS = {
    "identity": ["keystore", "cert_chain_path", "key_path", "trust_anchor_paths"],
    "dps": ["host", "port", "id_scope", "server_ca_path", "transport", "allowed_hub_suffixes"],
    "hub": ["port", "server_ca_path", "keep_alive_s"],
    "lifecycle": ["backoff_base_s", "backoff_cap_s", "reprovision_budget", "connect_timeout_s"],
    "telemetry": ["interval_s", "queue_max_messages", "max_in_flight", "buffer"],
    "state": ["directory"],
    "hal": ["backend", "mock_seed", "sensors"],
    "log": ["level"],
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # finite: the strategy draws no nan or inf
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items())
        return "{" + inner + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


toml_scalars = (
    st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=20)
    | st.sampled_from(["file", "tpm", "mock", "sqlite", "memory", "/dev/null", "/nonexistent"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["part", "bus", "address", "name", "x"]), inner, max_size=3
        )
    ),
    max_leaves=6,
)


@st.composite
def config_documents(draw: st.DrawFn) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from(list(SECTIONS)), unique=True, max_size=8)):
        lines.append(f"[{section}]")
        keys = SECTIONS[section] + ["unknown_key"]
        for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=4)):
            lines.append(f"{key} = {toml_value(draw(toml_values))}")
    return "\n".join(lines) + "\n"


def start(config: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*DEVICE_AGENT, "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NOTIFY_SOCKET": "", **(env_extra or {})},
    )


def outcome(proc: subprocess.Popen[str]) -> tuple[int, str, float]:
    """(exit code, stderr, seconds); a daemon still running after the limit gets SIGTERM."""
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=REFUSED_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
        return -1 if proc.returncode else 0, err, time.monotonic() - started
    return proc.returncode, err, time.monotonic() - started


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=config_documents())
def test_any_config_document_runs_or_exits_78_naming_the_file(
    document: str, tmp_path_factory: pytest.TempPathFactory, pycache: Path
) -> None:
    path = tmp_path_factory.mktemp("config") / "agent.toml"
    path.write_text(document)
    code, err, _ = outcome(start(path, {"PYTHONPYCACHEPREFIX": str(pycache)}))
    assert "Traceback" not in err, err[-2000:]
    assert code in (0, EX_CONFIG), (code, err[-2000:])
    if code == EX_CONFIG:
        assert str(path) in err, err[-2000:]


def test_a_directory_as_config_exits_78(tmp_path: Path) -> None:
    code, err, seconds = outcome(start(tmp_path))
    assert code == EX_CONFIG and str(tmp_path) in err and "directory" in err, err
    assert seconds < REFUSED_WITHIN_S


def special_file(kind: str, tmp_path: Path) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "agent.toml"
        os.mkfifo(path)
        return path
    path = tmp_path / "agent.toml"
    with path.open("wb") as out:
        out.truncate(100 * 1024 * 1024)  # sparse: 100 MB of NULs, no disk used
    return path


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_a_config_that_is_not_a_regular_file_or_too_large_is_refused_at_once(
    kind: str, tmp_path: Path
) -> None:
    path = special_file(kind, tmp_path)
    code, err, seconds = outcome(start(path))
    assert code == EX_CONFIG, (code, err[-2000:])
    assert str(path) in err and "Traceback" not in err, err[-2000:]
    assert "regular file" in err or "too large" in err, err[-2000:]
    assert seconds < REFUSED_WITHIN_S
