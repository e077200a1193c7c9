#!/usr/bin/python3
"""Build the device-agent Debian package (``make deb``) from this checkout.

Theory of operation
-------------------
A staged tree packed by ``dpkg-deb`` (Debian's own tool, no debhelper needed):

1. **The device's source only.** ``agent/`` and ``hal/`` with ``pyproject.toml`` and
   ``README.md`` are copied to a scratch folder, and the copy of ``pyproject.toml`` loses
   every ``devcloud`` entry (its console script, its package-data, its package pattern).
   The result is checked by parsing it again: a device never carries the test server or
   its test CA. The development checkout and its editable install are left as they are.
2. **A virtualenv at its final path.** ``python3.11 -m venv --without-pip`` makes
   ``STAGE/opt/device-agent``; the building pip (``--python``) installs the device
   source with the ``gpio`` extra (lgpio, gpiozero's preferred pin library) and the
   device dependencies, as binary wheels for this machine's architecture. Paths that
   name the staging folder (scripts, ``pyvenv.cfg``) are rewritten to
   ``/opt/device-agent``, and all bytecode is compiled with the device's paths.
3. **Debian's places.** ``/usr/bin/device-agent`` (a link into the venv), the units
   (the agent, the first-boot identity import and its path watch) in
   ``/lib/systemd/system``, sysusers.d and tmpfiles.d files under ``/usr/lib``, the
   config template ``/etc/device-agent/agent.toml`` (a conffile: dpkg keeps local edits
   on upgrade), the README and example configs in ``/usr/share/doc/device-agent``.
4. **Control data.** ``Architecture:`` from ``dpkg --print-architecture`` (the venv
   holds compiled wheels: one package per architecture), ``Depends:`` on the exact
   interpreter the venv was made with and on the glibc floor of the wheels' manylinux
   tags, and the maintainer scripts in ``deploy/deb/`` (user via systemd-sysusers,
   unit enabled but not started through deb-systemd-helper, state removed on purge).

Run it on the architecture you build for (a Pi, an arm64 build host, or a chroot with
qemu-user-static); see the README's "Debian package" section.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PACKAGE = "device-agent"
PREFIX = "/opt/device-agent"
#: The interpreter the venv is made with; Debian bookworm and Raspberry Pi OS 12 ship it.
DEFAULT_PYTHON = "/usr/bin/python3.11"
DEVICE_SOURCES = ("agent", "hal")
DEVICE_EXTRAS = "[gpio]"
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
DEVCLOUD_LINE = re.compile(r"^devcloud\s*=.*\n", re.MULTILINE)
MANYLINUX_TAG = re.compile(r"manylinux_(\d+)_(\d+)_")
#: manylinux2014 and older tags, by the glibc they stand for.
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


class BuildError(Exception):
    """The package cannot be built; the message says why."""


def run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a build step, failing the build with its output if it fails."""
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, **kwargs
    )  # type: ignore[call-overload]
    if result.returncode != 0:
        raise BuildError(f"{' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")
    return result  # type: ignore[no-any-return]


def project_version() -> str:
    """The version in pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def device_pyproject(text: str) -> str:
    """``pyproject.toml`` without devcloud: no script, no package pattern, no data, no extra."""
    stripped = DEVCLOUD_LINE.sub("", text)
    stripped = re.sub(r',\s*"devcloud\*"', "", stripped)
    parsed = tomllib.loads(stripped)
    setuptools = parsed["tool"]["setuptools"]
    leftovers = [
        where
        for where, names in (
            ("[project.scripts]", parsed["project"].get("scripts", {})),
            ("packages.find", setuptools.get("packages", {}).get("find", {}).get("include", [])),
            ("[tool.setuptools.package-data]", setuptools.get("package-data", {})),
        )
        if any(str(name).startswith("devcloud") for name in names)
    ]
    if leftovers or "devcloud" in parsed["project"].get("dependencies", []):
        raise BuildError(f"pyproject.toml still names devcloud in {', '.join(leftovers)}")
    return stripped


def stage_source(dest: Path) -> None:
    """Copy the device's source tree (agent, hal) and a devcloud-free pyproject to ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in DEVICE_SOURCES:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    shutil.copy2(REPO / "README.md", dest / "README.md")
    (dest / "pyproject.toml").write_text(device_pyproject((REPO / "pyproject.toml").read_text()))


def build_venv(stage: Path, src: Path, python: str, wheelhouse: Path | None) -> Path:
    """Make the venv at ``STAGE/opt/device-agent`` and install the device source into it."""
    venv = stage / PREFIX.lstrip("/")
    venv.parent.mkdir(parents=True)
    run(python, "-m", "venv", "--without-pip", venv)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    pip += ["--no-compile", "--no-warn-script-location", "--only-binary=:all:"]
    pip += ["--no-binary=device-agent", "--disable-pip-version-check"]
    if wheelhouse is not None:
        pip += ["--no-index", "--find-links", str(wheelhouse)]
    run(*pip, f"{src}{DEVICE_EXTRAS}")
    site = "lib/python3*/site-packages"
    for direct_url in venv.glob(f"{site}/device_agent-*.dist-info/direct_url.json"):
        direct_url.unlink()  # names the scratch folder it was built from
    if list(venv.glob(f"{site}/devcloud")) or (venv / "bin/devcloud").exists():
        raise BuildError("devcloud ended up in the device venv")
    # pyvenv.cfg and the scripts name the venv by its staging path: make it the device's.
    old, new = str(venv).encode(), PREFIX.encode()
    for path in [venv / "pyvenv.cfg", *(venv / "bin").iterdir()]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if old in data:
                path.write_bytes(data.replace(old, new))
    # Bytecode at build time, with the paths tracebacks will show on the device.
    run(python, "-m", "compileall", "-q", "-f", "-j", "0", "-s", stage, "-p", "/", venv / "lib")
    return venv


def glibc_floor(venv: Path) -> tuple[int, int]:
    """The newest glibc any installed wheel's manylinux tag asks for."""
    floor = (2, 17)
    for wheel in venv.glob("lib/python3*/site-packages/*.dist-info/WHEEL"):
        for line in wheel.read_text().splitlines():
            if not line.startswith("Tag:"):
                continue
            tag = line.split(":", 1)[1].strip()
            match = MANYLINUX_TAG.search(tag)
            if match:
                floor = max(floor, (int(match[1]), int(match[2])))
            for legacy, version in LEGACY_MANYLINUX.items():
                if legacy in tag:
                    floor = max(floor, version)
    return floor


def install_files(stage: Path) -> None:
    """The command, the systemd files, the conffile template and the documentation."""
    usr_bin = stage / "usr/bin"
    usr_bin.mkdir(parents=True)
    (usr_bin / PACKAGE).symlink_to(f"{PREFIX}/bin/{PACKAGE}")
    places = [
        (REPO / "systemd/device-agent.service", "lib/systemd/system/device-agent.service"),
        (REPO / "systemd/device-agent-import.service", "lib/systemd/system/"),
        (REPO / "systemd/device-agent-import.path", "lib/systemd/system/"),
        (REPO / "systemd/device-agent.sysusers.conf", "usr/lib/sysusers.d/device-agent.conf"),
        (REPO / "systemd/device-agent.tmpfiles.conf", "usr/lib/tmpfiles.d/device-agent.conf"),
        (REPO / "deploy/agent.azure.toml", "etc/device-agent/agent.toml"),
        (REPO / "README.md", f"usr/share/doc/{PACKAGE}/README.md"),
        (HERE / "copyright", f"usr/share/doc/{PACKAGE}/copyright"),
    ]
    places += [
        (example, f"usr/share/doc/{PACKAGE}/examples/{example.name}")
        for example in sorted((REPO / "deploy").glob("agent.*.toml"))
    ]
    for source, target in places:
        dest = stage / target / source.name if target.endswith("/") else stage / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        dest.chmod(0o644)


def installed_size_kib(stage: Path) -> int:
    """Installed-Size: the staged tree's size in KiB."""
    total = sum(p.lstat().st_size for p in stage.rglob("*") if not p.is_dir())
    return (total + 1023) // 1024


def write_control(stage: Path, version: str, python: str, venv: Path) -> None:
    """DEBIAN/: control, conffiles and the maintainer scripts."""
    debian = stage / "DEBIAN"
    debian.mkdir()
    arch = run("dpkg", "--print-architecture").stdout.strip()
    interpreter = Path(python).name  # python3.11: the Debian package of that name
    major, minor = glibc_floor(venv)
    control = {
        "Package": PACKAGE,
        "Version": version,
        "Architecture": arch,
        "Maintainer": "device-agent developers <device-agent@localhost>",
        "Installed-Size": str(installed_size_kib(stage)),
        "Depends": f"{interpreter}, libc6 (>= {major}.{minor}), systemd, init-system-helpers",
        "Section": "misc",
        "Priority": "optional",
        "Description": "Device agent for Raspberry Pi-class devices (Azure DPS, IoT Hub)\n"
        " X.509 identity, Azure IoT Hub Device Provisioning Service registration and\n"
        " telemetry from I2C sensors, as a hardened systemd service. The agent lives in\n"
        f" its own virtualenv in {PREFIX}.",
    }
    (debian / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    (debian / "conffiles").write_text("/etc/device-agent/agent.toml\n")
    for script in MAINTAINER_SCRIPTS:
        shutil.copyfile(HERE / script, debian / script)
        (debian / script).chmod(0o755)


def build(out: Path, version: str, python: str, wheelhouse: Path | None) -> Path:
    """Build the package into ``out``; returns the .deb's path."""
    if not Path(python).is_file():
        raise BuildError(f"no interpreter at {python} (apt-get install {Path(python).name})")
    out.mkdir(parents=True, exist_ok=True)
    os.umask(0o022)
    with tempfile.TemporaryDirectory(prefix="device-agent-deb.") as scratch:
        src, stage = Path(scratch, "src"), Path(scratch, "root")
        src.mkdir()
        stage.mkdir(mode=0o755)
        stage_source(src)
        venv = build_venv(stage, src, python, wheelhouse)
        install_files(stage)
        write_control(stage, version, python, venv)
        arch = (stage / "DEBIAN/control").read_text().split("Architecture: ")[1].split()[0]
        deb = out / f"{PACKAGE}_{version}_{arch}.deb"
        run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, deb)
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the device-agent .deb (make deb).")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="folder for the .deb")
    parser.add_argument(
        "--version", help="package version (default: pyproject's version, revision 1)"
    )
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="the venv's interpreter")
    parser.add_argument("--wheelhouse", type=Path, help="install offline from wheels here")
    args = parser.parse_args(argv)
    version = args.version or f"{project_version()}-1"
    try:
        deb = build(args.out.resolve(), version, args.python, args.wheelhouse)
    except BuildError as exc:
        print(f"build_deb: error: {exc}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
