"""The package in a golden image, booted as clones under real systemd (systemd-nspawn).

One image (``deploy/image/build-image.sh`` over the cached bookworm rootfs and the
``make deb`` package), two clones booted from it at once (``--volatile=overlay``: the
image itself is never written), each given its own identity as an admin would. Then,
in this order: both provision as distinct devices and send telemetry; the unit's
sandbox rating; ``systemctl stop`` is clean; the watchdog restarts a SIGSTOPped agent;
``apt-get upgrade`` to a newer build keeps state, config and identity; remove and
purge; and the image still holds no identity and no state.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devcloud.pki import Issued
from tests.support import nspawn
from tests.support.agentcloud import Cloud
from tests.support.waiting import wait_until
from tests.system.conftest import CHAIN, KEY, Image

UNIT = "device-agent.service"
CONFIG = "/etc/device-agent/agent.toml"
STATE = "/var/lib/device-agent/state.json"
REPO_DIR = "/srv/device-agent-repo"
REPO_LIST = "/srv/device-agent-repo.list"
APT_LOCAL = [
    "-o",
    f"Dir::Etc::SourceList={REPO_LIST}",
    "-o",
    "Dir::Etc::SourceParts=/nonexistent",
    "-o",
    "DPkg::Lock::Timeout=300",
]
MAX_EXPOSURE = 2.0
PROVISION_TIMEOUT_S = 60
CLONES = {"clone-a": "sys-clone-a", "clone-b": "sys-clone-b"}


def wait_active(machine: nspawn.Machine, status_prefix: str = "CONNECTED") -> dict[str, str]:
    """Wait until the unit is active with a STATUS= that starts with ``status_prefix``."""

    def reached() -> dict[str, str] | None:
        shown = machine.show(UNIT, "ActiveState", "StatusText", "MainPID", "NRestarts")
        ok = shown["ActiveState"] == "active" and shown["StatusText"].startswith(status_prefix)
        return shown if ok else None

    return wait_until(
        reached,
        timeout_s=PROVISION_TIMEOUT_S,
        what=f"{machine.name}: {UNIT} active with STATUS {status_prefix}…",
        interval_s=0.2,
    )


def timespan_s(text: str) -> float:
    """A systemd time span as ``systemctl show`` prints it (``30s``, ``1min 30s``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|min|s|h)", text)
    assert parts, f"not a time span: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


@dataclass(frozen=True)
class Fleet:
    """The booted clones, and each one's boot partition (a host folder bound in)."""

    machines: dict[str, nspawn.Machine]
    boots: dict[str, Path]

    def __getitem__(self, name: str) -> nspawn.Machine:
        return self.machines[name]

    def values(self) -> list[nspawn.Machine]:
        return list(self.machines.values())

    def items(self) -> list[tuple[str, nspawn.Machine]]:
        return list(self.machines.items())


def drop_on_boot_partition(boot: Path, device: Issued) -> Path:
    """The identity in ``boot``/device-agent/, as a user copies it onto the SD card.

    On a running device the folder is filled beside its final name and renamed into
    place, so the import (triggered by the rename) finds both files complete.
    """
    staging = boot / ".device-agent.new"
    staging.mkdir()
    shutil.copyfile(device.chain_path, staging / "device.chain.pem")
    shutil.copyfile(device.key_path, staging / "device.key")
    staging.rename(boot / "device-agent")
    return boot / "device-agent"


@pytest.fixture(name="fleet", scope="module")
def fleet_fixture(
    image: Image, cloud: Cloud, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    boots = {name: work / f"boot-{name}" for name in CLONES}
    for boot in boots.values():
        boot.mkdir()
    # clone-a's identity is on its boot partition before it first boots; clone-b boots
    # with none.
    drop_on_boot_partition(boots["clone-a"], cloud.pki.issue_device(CLONES["clone-a"]))
    machines = {
        name: nspawn.Machine(name, image.root, work, [f"--bind={boots[name]}:/boot/firmware"])
        for name in CLONES
    }
    try:
        for machine in machines.values():
            machine.start()
        yield Fleet(machines, boots)
    finally:
        for machine in machines.values():
            machine.stop()


def test_the_image_is_enabled_and_holds_no_identity_state_or_machine_id(image: Image) -> None:
    root = image.root
    assert (root / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    assert (root / "etc/systemd/system/paths.target.wants/device-agent-import.path").is_symlink()
    assert (root / "etc/machine-id").read_bytes() == b""
    assert not (root / CHAIN.lstrip("/")).exists()
    assert not (root / KEY.lstrip("/")).exists()
    assert list((root / "var/lib/device-agent").iterdir()) == []
    assert "image ready" in image.build_output


def test_a_clone_without_identity_waits_and_provisions_once_it_is_on_the_boot_partition(
    fleet: Fleet, cloud: Cloud
) -> None:
    machine = fleet["clone-b"]
    # No identity: not a configuration error (no 78): READY, waiting, saying where.
    waiting = wait_active(machine, "IDENTITY_WAIT: waiting for identity in /etc/device-agent/")
    assert "/boot/firmware/device-agent/" in waiting["StatusText"]
    assert waiting["NRestarts"] == "0"
    assert machine.system_state() == "running", machine.run("systemctl", "--failed").stdout
    assert cloud.client.registration_attempts(CLONES["clone-b"]) == 0

    drop = drop_on_boot_partition(fleet.boots["clone-b"], cloud.pki.issue_device(CLONES["clone-b"]))

    connected = wait_active(machine)
    assert connected["MainPID"] == waiting["MainPID"], "the agent was restarted, not woken"
    assert list(drop.iterdir()) == [], "the copy on the boot partition was left"
    agent_uid = machine.run("id", "-u", "device-agent").stdout.strip()
    for path, mode in ((KEY, 0o600), (CHAIN, 0o644)):
        info = machine.path(path).stat()
        assert (str(info.st_uid), info.st_mode & 0o777) == (agent_uid, mode), path


def test_an_identity_on_the_boot_partition_at_first_boot_is_imported_before_the_agent(
    fleet: Fleet,
) -> None:
    machine = fleet["clone-a"]
    shown = wait_active(machine)
    assert shown["NRestarts"] == "0"
    assert list((fleet.boots["clone-a"] / "device-agent").iterdir()) == []
    journal = machine.journal("device-agent-import.service")
    assert "imported /boot/firmware/device-agent/device.key -> /etc/device-agent/device.key" in (
        journal
    )
    # Straight to DPS: the agent never waited for its identity.
    assert "waiting for identity" not in machine.journal(UNIT)


def test_two_clones_provision_as_two_devices_and_send_telemetry(fleet: Fleet, cloud: Cloud) -> None:
    for name, machine in fleet.items():
        wait_active(machine)
        messages = cloud.client.wait_for_telemetry(
            device_id=CLONES[name], count=2, timeout_s=PROVISION_TIMEOUT_S
        )
        assert {m.device_id for m in messages} == {CLONES[name]}
    registrations = {r["registrationId"]: r for r in cloud.client.list_registrations()}
    assert {registrations[reg]["deviceId"] for reg in CLONES.values()} == set(CLONES.values())
    machine_ids = {m.path("/etc/machine-id").read_text().strip() for m in fleet.values()}
    assert len(machine_ids) == len(fleet.machines), "clones share a machine id"
    assert all(re.fullmatch(r"[0-9a-f]{32}", mid) for mid in machine_ids)


def test_root_commands_act_as_the_service_user(fleet: Fleet, cloud: Cloud) -> None:
    machine = fleet["clone-a"]
    wait_active(machine)
    status = machine.run("device-agent", "status")
    assert "acting as the service user device-agent" in status.stderr
    assert "daemon:          running" in status.stdout
    check = machine.run("device-agent", "check", "--offline", "--no-sensors")
    assert "every file the service reads is readable by device-agent" in check.stdout
    # A key root left behind (the issue: check as root passed, the service failed).
    machine.run("chown", "root:root", KEY)
    try:
        refused = machine.run("device-agent", "check", "--offline", "--no-sensors", check=False)
        assert refused.returncode == 1
        assert "not readable by device-agent (uid" in refused.stdout
        assert KEY in refused.stdout
    finally:
        machine.run("chown", "device-agent:device-agent", KEY)
    # provision as root: the state it writes is the service's, which uses it (no new DPS).
    machine.run("systemctl", "stop", UNIT)
    machine.run("device-agent", "provision")
    state = machine.path(STATE).stat()
    agent_uid = int(machine.run("id", "-u", "device-agent").stdout)
    assert state.st_uid == agent_uid
    attempts = cloud.client.registration_attempts(CLONES["clone-a"])
    machine.run("systemctl", "start", UNIT)
    wait_active(machine)
    assert cloud.client.registration_attempts(CLONES["clone-a"]) == attempts


def test_the_sandbox_exposure_is_at_most_2(fleet: Fleet) -> None:
    out = fleet["clone-a"].run("systemd-analyze", "security", UNIT, "--no-pager").stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-500:]
    assert float(match[1]) <= MAX_EXPOSURE, out


def test_systemctl_stop_is_clean_and_within_the_stop_timeout(
    fleet: Fleet,
) -> None:
    machine = fleet["clone-a"]
    wait_active(machine)
    limit_s = timespan_s(machine.show(UNIT, "TimeoutStopUSec")["TimeoutStopUSec"])
    took = nspawn.elapsed(lambda: machine.run("systemctl", "stop", UNIT))
    shown = machine.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert shown["ActiveState"] == "inactive"
    assert shown["Result"] == "success", machine.journal(UNIT)[-2000:]
    assert shown["ExecMainStatus"] == "0"
    assert took < limit_s, f"stop took {took:.2f} s"
    machine.run("systemctl", "start", UNIT)
    wait_active(machine)


def test_the_watchdog_restarts_a_sigstopped_agent(fleet: Fleet) -> None:
    machine = fleet["clone-a"]
    dropin = machine.path(f"/run/systemd/system/{UNIT}.d/watchdog.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=2\nRestartSec=0.5\n")
    try:
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", UNIT)
        before = wait_active(machine)
        machine.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", UNIT)

        def restarted() -> dict[str, str] | None:
            shown = machine.show(UNIT, "ActiveState", "StatusText", "MainPID", "NRestarts")
            fresh = shown["MainPID"] not in ("0", before["MainPID"])
            again = int(shown["NRestarts"]) > int(before["NRestarts"])
            return shown if fresh and again and shown["ActiveState"] == "active" else None

        wait_until(restarted, timeout_s=30, what="a restart by the watchdog", interval_s=0.2)
        assert "Watchdog timeout" in machine.journal(UNIT)
        wait_active(machine)
    finally:
        dropin.unlink()
        machine.run("systemctl", "daemon-reload")


def test_apt_upgrade_to_a_newer_build_keeps_state_config_and_identity(
    fleet: Fleet, cloud: Cloud, image: Image, tmp_path: Path
) -> None:
    machine = fleet["clone-b"]
    registration = CLONES["clone-b"]
    before = wait_active(machine)
    # An admin's edit of the conffile: dpkg must keep it, without asking.
    config = machine.path(CONFIG)
    config.write_text(config.read_text() + "\n# edited on this device\n")
    kept = {path: machine.path(path).read_bytes() for path in (CONFIG, CHAIN, KEY, STATE)}
    attempts = cloud.client.registration_attempts(registration)
    version = nspawn.deb_field(image.deb, "Version")
    newer = nspawn.rebuilt_deb(image.deb, f"{version}+upgrade1", tmp_path)
    repo = nspawn.local_repository(tmp_path / "repo", [newer])
    shutil.copytree(repo, machine.path(REPO_DIR))
    machine.path(REPO_LIST).write_text(f"deb [trusted=yes] file:{REPO_DIR} ./\n")

    machine.run("apt-get", *APT_LOCAL, "update")
    upgrade = machine.run(
        "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *APT_LOCAL, "-y", "upgrade"
    )

    assert "device-agent" in upgrade.stdout
    status = machine.run("dpkg-query", "-W", "-f=${Version}", "device-agent").stdout
    assert status == f"{version}+upgrade1"
    after = wait_active(machine)
    assert after["MainPID"] != before["MainPID"], "the upgrade did not restart the agent"
    for path, data in kept.items():
        assert machine.path(path).read_bytes() == data, f"{path} changed in the upgrade"
    since = cloud.client.last_sequence_number()
    cloud.client.wait_for_telemetry(since=since, device_id=registration, count=1, timeout_s=30)
    assert cloud.client.registration_attempts(registration) == attempts, "registered again"
    assert machine.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"


def test_remove_keeps_config_identity_and_state_and_purge_removes_state_and_config(
    fleet: Fleet,
) -> None:
    machine = fleet["clone-b"]
    machine.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "remove", "device-agent")
    status = machine.run("dpkg-query", "-W", "-f=${Status}", "device-agent").stdout
    assert status == "deinstall ok config-files"
    assert machine.show(UNIT, "LoadState")["LoadState"] in ("not-found", "masked")
    assert not machine.path("/opt/device-agent").exists()
    assert not machine.path("/usr/bin/device-agent").is_symlink()
    for kept in (CONFIG, CHAIN, KEY, STATE):
        assert machine.path(kept).exists(), f"remove took {kept}"
    assert machine.run("getent", "passwd", "device-agent", check=False).returncode == 0

    purge = machine.run(
        "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "purge", "device-agent"
    )

    assert machine.run("dpkg-query", "-W", "-f=${Status}", "device-agent", check=False).stdout in (
        "",
        "unknown ok not-installed",
    )
    assert not machine.path("/var/lib/device-agent").exists()
    assert not machine.path(CONFIG).exists()
    assert not machine.path(f"/etc/systemd/system/multi-user.target.wants/{UNIT}").exists()
    # The device's certificate and key are the admin's files: kept, and said so.
    assert machine.path(KEY).exists()
    assert "kept /etc/device-agent" in purge.stdout + purge.stderr


def test_the_image_is_unchanged_after_the_clones_ran(image: Image, fleet: Fleet) -> None:
    root = image.root
    assert (root / "etc/machine-id").read_bytes() == b""
    assert not (root / KEY.lstrip("/")).exists()
    assert list((root / "var/lib/device-agent").iterdir()) == []
    assert (root / "opt/device-agent/bin/device-agent").exists()
