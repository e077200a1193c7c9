"""Real systemd for system tests: a cached bookworm rootfs, the .deb, nspawn machines.

Theory of operation
-------------------
* :func:`cached_rootfs` — a debootstrapped Debian bookworm (minbase, systemd, D-Bus,
  python3.11) made by ``tests/system/make-rootfs.sh`` once, then kept under
  ``<cache>/rootfs-<key>``, where the key hashes the suite, the package list and the
  script's text. Built in a scratch folder and renamed into place, under a lock, so a
  half-built rootfs is never used and two test processes never build it twice.
* :func:`cached_deb` — ``deploy/deb/build_deb.py`` run once per source hash (agent/,
  hal/, systemd/, deploy/deb/, pyproject.toml, README.md, the example configs), kept
  under ``<cache>/deb-<hash>/``. :func:`rebuilt_deb` repacks it with another version,
  which is what an upgrade needs (same files, a newer version, the maintainer scripts
  run with the old version as argument).
* :class:`Machine` — ``systemd-nspawn --boot --volatile=overlay`` on an image folder:
  the image is never written (every change lands in a tmpfs overlay), so several
  clones boot from one image at once. Without ``--private-network`` a machine shares
  the host's network namespace and reaches devcloud on 127.x.y.z. It is driven with
  ``nsenter -t <its PID 1> -a``; its files are reachable from the host at
  ``/proc/<PID 1>/root/...``. ``stop()`` terminates the nspawn process by its PID
  (``--register=no`` leaves no machinectl) and waits for it; SIGKILL after a timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.refsdk import cache_root
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
MAKE_ROOTFS = REPO / "tests" / "system" / "make-rootfs.sh"
BUILD_DEB = REPO / "deploy" / "deb" / "build_deb.py"
BUILD_IMAGE = REPO / "deploy" / "image" / "build-image.sh"
SUITE = "bookworm"
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3.11", "init-system-helpers")
#: What decides the package's contents (anything else in the checkout does not).
DEB_INPUTS = (
    "agent",
    "hal",
    "systemd",
    "deploy/deb",
    "deploy/agent.azure.toml",
    "deploy/agent.devcloud.toml",
    "deploy/agent.laptop.toml",
    "pyproject.toml",
    "README.md",
)
DEBOOTSTRAP_TIMEOUT_S = 900
DEB_BUILD_TIMEOUT_S = 600
BOOT_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb", "dpkg-scanpackages")


def missing_tools() -> str | None:
    """Why system tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "system tests need root (debootstrap, systemd-nspawn)"
    lacking = [tool for tool in TOOLS if shutil.which(tool) is None]
    if lacking:
        return f"missing {', '.join(lacking)} (make sysdeps installs them)"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs_key(packages: Sequence[str] = ROOTFS_PACKAGES) -> str:
    """Hash of what decides the rootfs: suite, packages, the script that makes it."""
    digest = hashlib.sha256(f"{SUITE}\n{' '.join(sorted(packages))}\n".encode())
    digest.update(MAKE_ROOTFS.read_bytes())
    return digest.hexdigest()[:16]


def cached_rootfs(packages: Sequence[str] = ROOTFS_PACKAGES) -> Path:
    """The base rootfs, built on first use (about a minute) and cached by its inputs."""
    cache = cache_root()
    target = cache / f"rootfs-{SUITE}-{rootfs_key(packages)}"
    with _locked(cache / "rootfs.lock"):
        if (target / "etc" / "os-release").exists():
            return target
        scratch = Path(tempfile.mkdtemp(prefix="rootfs-building.", dir=cache))
        try:
            subprocess.run(
                ["sh", str(MAKE_ROOTFS), str(scratch / "root"), *packages],
                check=True,
                capture_output=True,
                timeout=DEBOOTSTRAP_TIMEOUT_S,
            )
            shutil.rmtree(target, ignore_errors=True)
            (scratch / "root").rename(target)
        except subprocess.CalledProcessError as exc:
            raise AssertionError(
                f"make-rootfs.sh failed:\n{exc.stdout.decode()[-3000:]}{exc.stderr.decode()}"
            ) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def source_hash() -> str:
    """Hash of every file the package is built from."""
    digest = hashlib.sha256()
    for name in DEB_INPUTS:
        top = REPO / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(REPO)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_deb() -> Path:
    """The package ``make deb`` builds, built once per source hash."""
    cache = cache_root()
    folder = cache / f"deb-{source_hash()}"
    with _locked(cache / "deb.lock"):
        found = sorted(folder.glob("device-agent_*.deb"))
        if found:
            return found[0]
        scratch = Path(tempfile.mkdtemp(prefix="deb-building.", dir=cache))
        try:
            result = subprocess.run(
                [sys.executable, str(BUILD_DEB), "--out", str(scratch)],
                capture_output=True,
                text=True,
                timeout=DEB_BUILD_TIMEOUT_S,
                check=False,
            )
            if result.returncode != 0:
                raise AssertionError(f"build_deb.py failed:\n{result.stdout}{result.stderr}")
            shutil.rmtree(folder, ignore_errors=True)
            scratch.rename(folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return sorted(folder.glob("device-agent_*.deb"))[0]


def deb_field(deb: Path, name: str) -> str:
    """One field of the package's control file."""
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def rebuilt_deb(deb: Path, version: str, out: Path) -> Path:
    """``deb`` repacked as ``version``: a newer build of the same contents.

    Uncompressed (``-Znone``): xz over the 26 MB tree took longer than the upgrade itself.
    """
    tree = out / f"tree-{version}"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    old = deb_field(deb, "Version")
    control.write_text(control.read_text().replace(f"Version: {old}\n", f"Version: {version}\n"))
    arch = deb_field(deb, "Architecture")
    new = out / f"device-agent_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(tree), str(new)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
    return new


def local_repository(folder: Path, debs: Sequence[Path]) -> Path:
    """A flat apt repository of ``debs`` in ``folder`` (``deb [trusted=yes] file:... ./``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy2(deb, folder / deb.name)
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."],
        cwd=folder,
        capture_output=True,
        check=True,
    ).stdout
    (folder / "Packages").write_bytes(packages)
    return folder


def build_image(
    base: Path, image: Path, deb: Path, *, config: Path, adds: Sequence[tuple[Path, str]] = ()
) -> subprocess.CompletedProcess[str]:
    """A copy of ``base`` at ``image``, made a golden image by deploy/image/build-image.sh."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(image)], check=True)
    args = ["bash", str(BUILD_IMAGE), "--root", str(image), "--deb", str(deb)]
    args += ["--config", str(config)]
    for src, dest in adds:
        args += ["--add", f"{src}:{dest}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise AssertionError(f"build-image.sh failed:\n{result.stdout}{result.stderr}")
    return result


class Machine:
    """One systemd-nspawn container booted from an image folder (never written)."""

    def __init__(
        self, name: str, image: Path, log_dir: Path, nspawn_args: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.image = image
        self.log_path = log_dir / f"nspawn-{name}.log"
        self.nspawn_args = list(nspawn_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def start(self) -> Machine:
        """Boot; returns once systemd says the system is up (running or degraded)."""
        args = ["systemd-nspawn", "-D", str(self.image), "--boot", "--register=no"]
        args += ["--keep-unit", "--volatile=overlay", "--console=pipe", "-M", self.name]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*args, *self.nspawn_args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.leader = wait_until(self._find_leader, timeout_s=BOOT_TIMEOUT_S, what="PID 1")
            wait_until(
                lambda: self.system_state() in ("running", "degraded"),
                timeout_s=BOOT_TIMEOUT_S,
                what=f"{self.name} to boot",
                interval_s=0.1,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _find_leader(self) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"nspawn exited: {self.log_path.read_text()[-2000:]}")
        # nspawn forks a short-lived helper first: the leader is the child that is PID 1
        # of its own PID namespace (the last NSpid field).
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
                if nspid.split()[-1] == "1" and len(nspid.split()) > 2:
                    return int(pid)
        return None

    def system_state(self) -> str:
        return self.run("systemctl", "is-system-running", check=False).stdout.strip()

    def run(
        self, *args: str, check: bool = True, timeout_s: float = 120, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the machine, as root, in all its namespaces."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            input=input_text,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def path(self, inside: str) -> Path:
        """A path inside the machine, as the host reaches it."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of a unit."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat", check=False).stdout

    def stop(self) -> None:
        """Power the machine off (SIGTERM to nspawn: a clean shutdown), by PID."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> Machine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def elapsed(action: object) -> float:
    """Seconds a callable took."""
    assert callable(action)
    start = time.monotonic()
    action()
    return time.monotonic() - start
