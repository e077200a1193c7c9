"""GPIO under the installed unit: gpiozero finds the board, lgpio loads, in the sandbox.

The machine here is an x86 VM, so the board is faked where the kernel would show it:
a device tree folder bound over ``/sys/firmware`` (on a Pi, ``/proc/device-tree`` links
to ``/sys/firmware/devicetree/base``), and a ``/proc/cpuinfo`` with a Raspberry Pi 4's
``Revision`` line. procfs has no ``device-tree`` entry on a kernel without a device
tree and cannot be given one, so gpiozero takes its documented fallback, the
``Revision`` line of ``/proc/cpuinfo``. The unit gets its own procfs instance
(``ProtectProc=``), so the fake cpuinfo is bound in by the test's drop-in
(``BindReadOnlyPaths=``); the drop-in otherwise only swaps the command for a probe and
makes it a oneshot: user, groups, device policy, system call filter, ``ProtectSystem``,
``ProtectKernelTunables`` and the rest are the package's unit as installed.

The probe uses gpiozero's own detection (``get_pi_revision``, what its local pin
factories call) and imports lgpio, the pin library the package brings. There is no
``/dev/gpiochip*`` on this VM (no gpio-sim driver), so opening a chip is not tested.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import nspawn
from tests.system.conftest import Image

UNIT = "device-agent.service"
REVISION = 0xC03114  # Raspberry Pi 4 Model B rev 1.4, 4 GB, Sony UK
MODEL = "Raspberry Pi 4 Model B Rev 1.4"
PROBE_OUT = "/var/lib/device-agent/gpio-probe.json"
PROBE = f"""
import json, os, sys
result = {{"cpuinfo_visible": os.path.exists("/proc/cpuinfo")}}
try:
    from gpiozero.pins.local import get_pi_revision
    from gpiozero.pins.pi import PiBoardInfo
    info = PiBoardInfo.from_revision(get_pi_revision())
    result.update(revision=info.revision, model=info.model, soc=info.soc)
except Exception as exc:
    result["gpiozero_error"] = repr(exc)
try:
    import lgpio
    result["lgpio"] = lgpio.__file__
except Exception as exc:
    result["lgpio_error"] = repr(exc)
try:
    with open("/proc/device-tree/model", "rb") as f:
        result["proc_dt_model"] = f.read().rstrip(b"\\0").decode()
except OSError as exc:
    result["proc_dt_error"] = exc.strerror
with open("/sys/firmware/devicetree/base/model", "rb") as f:
    result["dt_model"] = f.read().rstrip(b"\\0").decode()
with open("{PROBE_OUT}", "w") as f:
    json.dump(result, f)
"""


def fake_board(folder: Path) -> Path:
    """A Pi 4's device tree (``firmware/devicetree/base``) and cpuinfo in ``folder``."""
    base = folder / "firmware" / "devicetree" / "base"
    (base / "system").mkdir(parents=True)
    (base / "model").write_bytes(MODEL.encode() + b"\0")
    (base / "compatible").write_bytes(b"raspberrypi,4-model-b\0brcm,bcm2711\0")
    (base / "system" / "linux,revision").write_bytes(struct.pack(">L", REVISION))
    cpuinfo = Path("/proc/cpuinfo").read_text()
    (folder / "cpuinfo").write_text(
        f"{cpuinfo}Hardware\t: BCM2835\nRevision\t: {REVISION:x}\nModel\t\t: {MODEL}\n"
    )
    return folder


@pytest.fixture(name="board", scope="module")
def board_fixture(
    image: Image, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[nspawn.Machine]:
    fake = fake_board(tmp_path_factory.mktemp("fake-board"))
    args = [f"--bind-ro={fake}:/run/fake-board", f"--bind-ro={fake}/firmware:/sys/firmware"]
    with nspawn.Machine("gpio", image.root, tmp_path_factory.mktemp("gpio-logs"), args) as m:
        m.path("/run/gpio-probe.py").write_text(PROBE)
        yield m


def run_probe(machine: nspawn.Machine, dropin: str) -> tuple[dict[str, str], dict[str, object]]:
    """Run the probe as the unit with ``dropin`` added; its result and the unit's."""
    path = machine.path(f"/run/systemd/system/{UNIT}.d/gpio-probe.conf")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[Service]\nType=oneshot\nExecStart=\n"
        "ExecStart=/opt/device-agent/bin/python /run/gpio-probe.py\n"
        "WatchdogSec=0\nRestart=no\n" + dropin
    )
    out = machine.path(PROBE_OUT)
    out.unlink(missing_ok=True)
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "restart", UNIT, check=False)  # the agent may be waiting
    shown = machine.show(UNIT, "Result", "ExecMainStatus")
    result = json.loads(out.read_text()) if out.exists() else {}
    return shown, result


def test_gpiozero_identifies_the_board_and_lgpio_loads_under_the_unit(
    board: nspawn.Machine,
) -> None:
    shown, result = run_probe(board, "BindReadOnlyPaths=/run/fake-board/cpuinfo:/proc/cpuinfo\n")

    assert shown["Result"] == "success", board.journal(UNIT)[-2000:]
    assert result.get("model") == "4B", result
    assert result.get("revision") == f"{REVISION:x}"
    assert result.get("soc") == "BCM2711"
    assert str(result.get("lgpio", "")).startswith("/opt/device-agent/"), json.dumps(result)
    assert result.get("dt_model") == MODEL


def test_procsubset_pid_would_hide_what_gpiozero_reads(board: nspawn.Machine) -> None:
    # The control: the setting the unit no longer has hides /proc/cpuinfo (and, on a
    # Pi, /proc/device-tree), which is why gpiozero could not find the board.
    shown, result = run_probe(board, "ProcSubset=pid\n")
    assert shown["Result"] == "success", board.journal(UNIT)[-2000:]
    assert result["cpuinfo_visible"] is False
    assert "gpiozero_error" in result
    # And the shipped unit, without it, sees the kernel's file.
    _, shipped = run_probe(board, "")
    assert shipped["cpuinfo_visible"] is True
