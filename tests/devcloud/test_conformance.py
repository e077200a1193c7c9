"""The reference-SDK virtualenv: cache location, cache key, lock, atomic build.

The venv itself is built once per machine (about 10 s) and cached; these tests check
the rules around it without rebuilding it.
"""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

import pytest

from tests.support import refsdk


def test_cache_root_precedence() -> None:
    assert refsdk.cache_root({"DEVICE_AGENT_CACHE": "/a", "XDG_CACHE_HOME": "/b"}) == Path("/a")
    assert refsdk.cache_root({"XDG_CACHE_HOME": "/b", "HOME": "/h"}) == Path("/b/device-agent")
    assert refsdk.cache_root({"HOME": "/h"}) == Path("/h/.cache/device-agent")
    assert refsdk.cache_root({"DEVICE_AGENT_CACHE": "", "HOME": "/h"}) == Path(
        "/h/.cache/device-agent"
    )


def test_cache_key_follows_the_inputs() -> None:
    base = refsdk.cache_key(("azure-iot-device==2.14.0",), python="3.11.7")
    assert base == refsdk.cache_key(("azure-iot-device==2.14.0",), python="3.11.7")
    assert base != refsdk.cache_key(("azure-iot-device==2.15.0",), python="3.11.7")
    assert base != refsdk.cache_key(("azure-iot-device==2.14.0",), python="3.12.1")
    assert base != refsdk.cache_key(("azure-iot-device==2.14.0", "paho-mqtt<2"), python="3.11.7")


def test_lock_wait_is_bounded(tmp_path: Path) -> None:
    lock_path = tmp_path / "x.lock"
    with open(lock_path, "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with (
            pytest.raises(refsdk.RefSDKError, match="still locked"),
            refsdk._exclusive(lock_path, timeout_s=0.3),
        ):
            pass
    with refsdk._exclusive(lock_path, timeout_s=0.3):
        pass  # free again once the holder let go


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    key = refsdk.cache_key(("azure-iot-device==2.14.0",))
    stale = tmp_path / f".refsdk-{key}.tmp-killed"
    (stale / "bin").mkdir(parents=True)
    half = tmp_path / f"refsdk-{key}"
    (half / "bin").mkdir(parents=True)  # a venv without its marker: never trusted
    with pytest.raises(refsdk.RefSDKError, match="exited"):
        refsdk.ensure_venv(root=tmp_path, base_python="/bin/false")
    assert not stale.exists()
    assert not half.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"refsdk-{key}.lock"]


@pytest.mark.conformance
def test_the_cached_venv_holds_the_pinned_sdk(refsdk_python: Path) -> None:
    venv = refsdk_python.parent.parent
    assert venv.name == f"refsdk-{refsdk.cache_key()}"
    assert (venv / ".complete").read_text().split() == list(refsdk.REQUIREMENTS)
    assert not list(venv.parent.glob(f".refsdk-{refsdk.cache_key()}.tmp-*"))
    versions = subprocess.run(
        [
            str(refsdk_python),
            "-c",
            "from importlib.metadata import version as v; import azure.iot.device, paho.mqtt;"
            " print(v('azure-iot-device'), v('paho-mqtt'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert versions[0] == "2.14.0"
    assert versions[1].startswith("1.")  # the SDK's pin, unlike the project's paho 2.x
    # A second call finds the complete venv and does not rebuild it.
    marker_mtime = (venv / ".complete").stat().st_mtime_ns
    assert refsdk.ensure_venv() == refsdk_python
    assert (venv / ".complete").stat().st_mtime_ns == marker_mtime


@pytest.fixture(scope="session")
def refsdk_python() -> Path:
    return refsdk.ensure_venv()
