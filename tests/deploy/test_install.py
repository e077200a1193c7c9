"""deploy/install.sh, run for real into a scratch root (``--root`` / ``DESTDIR``).

The install is real: a virtualenv made by the system Python, the project built from
this checkout and installed into it by pip, the link, the unit, sysusers.d and
tmpfiles.d files, the config. Only the network is cut: pip builds offline from
Debian's wheels of setuptools and wheel (``--wheelhouse /usr/share/python-wheels``)
and installs the project without its dependencies (``PIP_NO_DEPS``), which the
checks below do not need. systemctl, systemd-sysusers and systemd-tmpfiles are
replaced by stubs that record any call: in ``--root`` mode there must be none.

One install, then a second one over it with ``--enable`` and an edited config; each
run's result is recorded as data, and the tests assert on those records.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install.sh"
SYSTEM_PYTHON = Path("/usr/bin/python3")
DEBIAN_WHEELS = Path("/usr/share/python-wheels")
PREFIX = "/opt/device-agent"
UNIT = "etc/systemd/system/device-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/device-agent.service"
SYSUSERS = "etc/sysusers.d/device-agent.conf"
TMPFILES = "etc/tmpfiles.d/device-agent.conf"
CONFIG = "etc/device-agent/agent.toml"
INSTALL_TIMEOUT_S = 300
STUBBED_TOOLS = ("systemctl", "systemd-sysusers", "systemd-tmpfiles")
EX_USAGE = 64


@dataclass(frozen=True)
class Entry:
    """One path of the scratch root: kind, permission bits, and content or link target."""

    kind: str  # "file", "dir" or "link"
    mode: int
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class Run:
    """One run of install.sh: exit code, output, the root's tree after it, stub calls."""

    returncode: int
    output: str
    tree: Mapping[str, Entry]
    tool_calls: str


def offline_build_possible() -> str | None:
    """Why an offline build cannot happen here, or None when it can."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing (package python3)"
    wheels = {p.name.split("-")[0] for p in DEBIAN_WHEELS.glob("*.whl")}
    lacking = sorted({"setuptools", "wheel"} - wheels)
    if lacking:
        packages = ", ".join(f"python3-{name}-whl" for name in lacking)
        return f"no {'/'.join(lacking)} wheel in {DEBIAN_WHEELS} (Debian package {packages})"
    return None


def snapshot(root: Path) -> dict[str, Entry]:
    """Every path under ``root`` except the virtualenv's library, relative to ``root``."""
    tree: dict[str, Entry] = {}
    skip = root / PREFIX.lstrip("/") / "lib"
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here == skip:
            dirs.clear()
            continue
        for name in dirs + files:
            path = here / name
            key = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                tree[key] = Entry("link", 0, target=os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                tree[key] = Entry("dir", stat.S_IMODE(info.st_mode))
            else:
                tree[key] = Entry("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return tree


def stub_tools(folder: Path, log: Path) -> None:
    """systemctl & co. that record their arguments and fail."""
    folder.mkdir()
    for name in STUBBED_TOOLS:
        stub = folder / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 1\n')
        stub.chmod(0o755)


def script_env(stubs: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without pip settings, plus offline pip and the stubs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "DESTDIR"}
    env.update(
        PATH=f"{stubs}:{env.get('PATH', '/usr/bin:/bin')}",
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_DEPS="1",
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        **extra,
    )
    return env


def run_script(root: Path, args: list[str], env: Mapping[str, str], log: Path) -> Run:
    result = subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    calls = log.read_text() if log.exists() else ""
    tree = snapshot(root) if root.exists() else {}
    return Run(result.returncode, result.stdout + result.stderr, tree, calls)


@dataclass(frozen=True)
class Installs:
    """Both runs over one scratch root."""

    root: Path
    first: Run
    second: Run
    edited_config: bytes


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installs]:
    reason = offline_build_possible()
    if reason is not None:
        pytest.skip(f"cannot build offline: {reason}")
    base = tmp_path_factory.mktemp("install")
    root = base / "root"
    log = base / "tool-calls.log"
    stub_tools(base / "stubs", log)
    wheels = ["--wheelhouse", str(DEBIAN_WHEELS)]
    # First: DESTDIR names the root, defaults otherwise.
    first = run_script(root, wheels, script_env(base / "stubs", DESTDIR=str(root)), log)
    assert first.returncode == 0, first.output
    # Second, over it: an operator's edited config must survive; --enable links the unit.
    edited = b"# edited by the operator\n" + (root / CONFIG).read_bytes()
    (root / CONFIG).write_bytes(edited)
    second = run_script(
        root, ["--root", str(root), "--enable", *wheels], script_env(base / "stubs"), log
    )
    assert second.returncode == 0, second.output
    yield Installs(root, first, second, edited)


# --- what lands where ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "source"),
    [
        (UNIT, "systemd/device-agent.service"),
        (SYSUSERS, "systemd/device-agent.sysusers.conf"),
        (TMPFILES, "systemd/device-agent.tmpfiles.conf"),
        ("usr/share/doc/device-agent/README.md", "README.md"),
        ("usr/share/doc/device-agent/examples/agent.azure.toml", "deploy/agent.azure.toml"),
        ("usr/share/doc/device-agent/examples/agent.laptop.toml", "deploy/agent.laptop.toml"),
    ],
)
def test_files_are_copies_with_mode_0644(installs: Installs, installed: str, source: str) -> None:
    for run in (installs.first, installs.second):
        entry = run.tree[installed]
        assert (entry.kind, oct(entry.mode)) == ("file", "0o644")
        assert entry.data == (REPO / source).read_bytes()


def test_command_is_a_link_to_the_virtualenv(installs: Installs) -> None:
    for run in (installs.first, installs.second):
        assert run.tree["usr/bin/device-agent"] == Entry(
            "link", 0, target=f"{PREFIX}/bin/device-agent"
        )
        script = run.tree[f"{PREFIX.lstrip('/')}/bin/device-agent"]
        assert script.kind == "file" and script.mode & 0o111 == 0o111


def test_unit_runs_the_linked_command(installs: Installs) -> None:
    unit = installs.first.tree[UNIT].data.decode()
    assert re.search(r"^ExecStart=/usr/bin/device-agent run$", unit, re.MULTILINE)
    doc = re.search(r"^Documentation=file:(\S+)$", unit, re.MULTILINE)
    assert doc is not None
    assert installs.first.tree[doc.group(1).lstrip("/")].kind == "file"


def test_config_is_copied_once_and_then_left_alone(installs: Installs) -> None:
    config = installs.first.tree[CONFIG]
    assert (config.kind, oct(config.mode)) == ("file", "0o644")
    assert config.data == (REPO / "deploy/agent.azure.toml").read_bytes()
    assert installs.second.tree[CONFIG].data == installs.edited_config
    assert "keeping the existing" in installs.second.output
    folder = installs.first.tree["etc/device-agent"]
    assert (folder.kind, oct(folder.mode)) == ("dir", "0o750")


def test_enabled_only_when_asked(installs: Installs) -> None:
    assert WANTS not in installs.first.tree
    assert installs.second.tree[WANTS] == Entry(
        "link", 0, target="/etc/systemd/system/device-agent.service"
    )


def test_no_systemd_tool_runs_under_a_root(installs: Installs) -> None:
    assert installs.first.tool_calls == ""
    assert installs.second.tool_calls == ""
    assert f"systemd-sysusers --root={installs.root}" in installs.first.output


# --- the virtualenv works where it will be ------------------------------------------------------


def test_no_path_names_the_scratch_root(installs: Installs) -> None:
    marker = str(installs.root).encode()
    for run in (installs.first, installs.second):
        leaks = [k for k, e in run.tree.items() if marker in e.data or marker in e.target.encode()]
        assert leaks == []
        shebang = run.tree[f"{PREFIX.lstrip('/')}/bin/device-agent"].data.split(b"\n")[0]
        assert shebang == f"#!{PREFIX}/bin/python".encode()


def test_bytecode_names_the_device_paths(installs: Installs) -> None:
    venv = installs.root / PREFIX.lstrip("/")
    (cached,) = venv.glob("lib/python3.*/site-packages/agent/cli/__pycache__/main.cpython-*.pyc")
    source = cached.parent.parent / "main.py"
    # Read by the virtualenv's own Python (marshal is version-specific), past the
    # 16-byte header (PEP 552). Importing would not tell: it fixes co_filename up.
    read = (
        "import marshal, sys; print(marshal.loads(open(sys.argv[1], 'rb').read()[16:]).co_filename)"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", read, str(cached)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (
        0,
        f"/{source.relative_to(installs.root)}",
    ), result.stderr


def test_installed_command_runs_from_the_virtualenv(installs: Installs) -> None:
    venv = installs.root / PREFIX.lstrip("/")
    python, command = venv / "bin" / "python", venv / "bin" / "device-agent"
    version = subprocess.run(
        [str(python), str(command), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (version.returncode, version.stdout.strip()) == (0, f"device-agent {__version__}")
    where = subprocess.run(
        [str(python), "-c", "import agent, hal, devcloud; print(agent.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=installs.root,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv / "lib")


# --- refusals, before anything is touched ---------------------------------------------------------


def refused(tmp_path: Path, *args: str) -> Run:
    log = tmp_path / "tool-calls.log"
    stub_tools(tmp_path / "stubs", log)
    return run_script(
        tmp_path / "root",
        ["--root", str(tmp_path / "root"), *args],
        script_env(tmp_path / "stubs"),
        log,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["--prefix", "opt/device-agent"], "--prefix must be an absolute path"),
        (["--systemd-extra", "maybe"], "--systemd-extra must be auto, yes or no"),
        (["--wheelhouse"], "--wheelhouse needs a value"),
    ],
)
def test_usage_errors_exit_64(tmp_path: Path, args: list[str], message: str) -> None:
    run = refused(tmp_path, *args)
    assert (run.returncode, message in run.output) == (EX_USAGE, True), run.output
    assert run.tree == {}


def test_a_real_file_at_the_link_path_is_not_replaced(tmp_path: Path) -> None:
    command = tmp_path / "root" / "usr" / "bin" / "device-agent"
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\necho from a package\n")
    run = refused(tmp_path)
    assert run.returncode == 1
    assert "is not a symbolic link; not replacing it" in run.output
    assert set(run.tree) == {"usr", "usr/bin", "usr/bin/device-agent"}
    assert command.read_text() == "#!/bin/sh\necho from a package\n"


def test_a_prefix_that_is_not_a_virtualenv_is_not_installed_over(tmp_path: Path) -> None:
    other = tmp_path / "root" / "opt" / "device-agent" / "data.txt"
    other.parent.mkdir(parents=True)
    other.write_text("someone else's\n")
    run = refused(tmp_path)
    assert run.returncode == 1
    assert "is not a virtualenv; not installing over it" in run.output
    assert set(run.tree) == {"opt", "opt/device-agent", "opt/device-agent/data.txt"}


def test_a_wheelhouse_without_the_build_tools_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "setuptools-80.0.0-py3-none-any.whl").write_bytes(b"")
    run = refused(tmp_path, "--wheelhouse", str(wheels))
    assert run.returncode == 1
    assert f"no wheel wheel in {wheels}: building this checkout needs it" in run.output
    assert run.tree == {}


def test_help_prints_the_usage(tmp_path: Path) -> None:
    run = refused(tmp_path, "--help")
    assert run.returncode == 0
    assert run.output.startswith("Install device-agent from this checkout")
    assert "Usage: deploy/install.sh [--root DIR]" in run.output
    assert run.tree == {}
