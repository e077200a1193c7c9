"""A real TPM 2.0 for tests: swtpm on loopback and the OpenSSL tpm2 provider.

Theory of operation
-------------------
**The provider.** Bookworm's ``tpm2-openssl`` 1.1.1 loads TSS2 keys but fails every TLS
handshake; 1.2.0 fixed it. :func:`ensure_provider` therefore uses the system's package
only when it is 1.2 or newer (Raspberry Pi OS 13 / Debian trixie ship 1.3.0), and
otherwise fetches trixie's ``.deb`` once and caches it, keyed on its inputs:

1. :func:`archive_source` reads how this machine reaches the Debian archive
   (``/etc/apt/sources.list`` and ``sources.list.d/*.list|*.sources``), takes the
   entry that carries the host's own suite (e.g. ``bookworm``) and writes the same
   mirror and keyring with the suite ``trixie`` — nothing names a host here;
2. under ``${DEVICE_AGENT_CACHE:-...}/tpm2-openssl/<hash of that source line>/``, with an
   exclusive ``flock``: if a complete unpack (``.complete`` marker) exists, use it;
   else run ``apt-get update`` / ``apt-get download`` with private ``Dir::State::Lists``,
   ``Dir::Cache``, ``Dir::Etc::SourceList`` (and no system preferences), ``dpkg -x`` the
   package into a temporary folder named after its version, write the marker and rename
   it into place. A run killed at any point leaves either nothing or a complete unpack.
3. :func:`write_openssl_conf` writes an ``OPENSSL_CONF`` that loads the default and the
   tpm2 providers, ``module=`` pointing at that ``tpm2.so``.

OpenSSL reads its config once per process, before anything touches ``ssl`` or
``hashlib``: everything that uses the TPM runs as a child process started with
:meth:`SwTpm.env` (``OPENSSL_CONF`` + ``TPM2OPENSSL_TCTI``).

**swtpm.** :class:`SwTpm` starts ``swtpm socket --tpm2`` on 127.0.0.1 with its own state
directory and ``--flags not-need-init,startup-clear``. The swtpm TCTI finds the control
channel at the server port + 1, so a free *pair* of consecutive ports is chosen (bound
and released just before the start; a start that loses the race is retried, bounded).
It is ready when ``swtpm_ioctl -c`` answers on the control port. :meth:`SwTpm.stop`
sends ``swtpm_ioctl --tcp HOST:CTRL -s`` and then kills the process by PID if it is
still there. swtpm has three transient object slots and no resource manager; a
process killed while holding a loaded key leaks its slot, so each test gets a fresh
swtpm (the ``swtpm`` fixture) or calls :meth:`SwTpm.flush_transient`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.refsdk import cache_root
from tests.support.waiting import wait_until

PACKAGE = "tpm2-openssl"
#: The first release whose TLS handshakes work (1.1.1 fails every one).
MIN_VERSION = (1, 2)
#: The Debian suite that carries a good enough provider.
PROVIDER_SUITE = "trixie"
MODULE_RELATIVE = Path("usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so")
LOOPBACK = "127.0.0.1"
#: Bounds: apt's network steps, swtpm's start, a lock held by another run.
APT_TIMEOUT_S = 300.0
START_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 600.0
START_ATTEMPTS = 5
_MARKER = ".complete"


class TpmSetupError(RuntimeError):
    """swtpm or the tpm2 provider could not be set up (the message says which step)."""


# -- the provider -------------------------------------------------------------------------


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric parts of a Debian version: ``"1.3.0-1"`` -> ``(1, 3, 0)``."""
    upstream = version.split(":", 1)[-1].split("-", 1)[0]
    parts: list[int] = []
    for piece in upstream.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    text = os_release.read_text() if os_release.is_file() else ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.MULTILINE)
    if match is None:
        raise TpmSetupError(f"{os_release}: no VERSION_CODENAME (not Debian-like?)")
    return match.group(1)


@dataclass(frozen=True)
class AptSource:
    """One archive entry: the mirror URI and the keyring it is signed with."""

    uri: str
    signed_by: str | None

    def line(self, suite: str, component: str = "main") -> str:
        """A one-line ``sources.list`` entry for ``suite`` on this mirror."""
        option = f" [signed-by={self.signed_by}]" if self.signed_by else ""
        return f"deb{option} {self.uri} {suite} {component}"


def _deb822_entries(text: str) -> Iterator[dict[str, str]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0].isspace() and fields:
                continue  # continuation lines (multi-line Signed-By keys): not a path
            name, _, value = raw.partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields:
            yield fields


def _one_line_entries(text: str) -> Iterator[dict[str, str]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)(\s+.*)?$", line)
        if match is None:
            continue
        options = match.group(1) or ""
        signed = re.search(r"signed-by=(\S+?)[\s\]]", options + " ")
        fields = {"types": "deb", "uris": match.group(2), "suites": match.group(3)}
        if signed:
            fields["signed-by"] = signed.group(1)
        yield fields


def archive_source(apt_dir: Path = Path("/etc/apt"), codename: str | None = None) -> AptSource:
    """The mirror (and keyring) this machine's apt uses for its own suite.

    Reads ``sources.list`` and ``sources.list.d/*.list`` / ``*.sources``; the first
    ``deb`` entry whose suites include the host's codename wins.
    """
    suite = codename or _host_codename()
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for fields in entries:
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if suite not in fields.get("suites", "").split():
                continue
            uris = fields.get("uris", "").split()
            signed = fields.get("signed-by") or None
            if uris:
                return AptSource(uri=uris[0], signed_by=signed if signed else None)
    raise TpmSetupError(f"no apt source for suite {suite!r} under {apt_dir}")


def installed_version(package: str = PACKAGE) -> str | None:
    """The installed version of a Debian package, or None."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or "install ok installed" not in done.stdout:
        return None
    return done.stdout.split("\t", 1)[1].strip()


@dataclass(frozen=True)
class Provider:
    """A usable tpm2 provider: its module, version, and an OPENSSL_CONF loading it."""

    module: Path
    version: str
    openssl_conf: Path


def write_openssl_conf(path: Path, module: Path) -> Path:
    """An OpenSSL config that activates the default and the tpm2 (``module``) providers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "openssl_conf = openssl_init\n\n"
        "[openssl_init]\nproviders = provider_sect\n\n"
        "[provider_sect]\ndefault = default_sect\ntpm2 = tpm2_sect\n\n"
        "[default_sect]\nactivate = 1\n\n"
        f"[tpm2_sect]\nmodule = {module}\nactivate = 1\n"
    )
    return path


def _apt_options(work: Path, sources: Path) -> list[str]:
    for sub in ("lists/partial", "cache/archives/partial", "preferences.d"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    return [
        "-q",
        "-o",
        f"Dir::State::Lists={work / 'lists'}",
        "-o",
        f"Dir::Cache={work / 'cache'}",
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        f"Dir::Etc::SourceParts={work / 'no-source-parts'}",
        "-o",
        f"Dir::Etc::Preferences={work / 'preferences'}",
        "-o",
        f"Dir::Etc::PreferencesParts={work / 'preferences.d'}",
        "-o",
        "DPkg::Lock::Timeout=300",
        # As root, apt drops to _apt for downloads, which cannot write the private dirs.
        *(["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []),
    ]


def _run(argv: Sequence[str], what: str, *, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=APT_TIMEOUT_S, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TpmSetupError(f"{what}: no answer within {APT_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise TpmSetupError(f"{what} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def fetch_provider(root: Path, source: AptSource) -> Provider:
    """Trixie's tpm2-openssl, unpacked under ``root`` (cached; see the module docstring)."""
    line = source.line(PROVIDER_SUITE)
    key = hashlib.sha256(f"{PACKAGE}\n{line}".encode()).hexdigest()[:16]
    home = root / PACKAGE / key
    home.mkdir(parents=True, exist_ok=True)

    def complete() -> Provider | None:
        found = sorted(
            (p for p in home.iterdir() if (p / _MARKER).is_file()),
            key=lambda p: version_tuple(p.name),
        )
        if not found:
            return None
        newest = found[-1]
        return Provider(newest / MODULE_RELATIVE, newest.name, newest / "openssl.cnf")

    ready = complete()
    if ready is not None:
        return ready
    from tests.support.refsdk import _exclusive

    with _exclusive(home / ".lock", LOCK_TIMEOUT_S):
        ready = complete()
        if ready is not None:
            return ready
        for stale in home.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=home))
        try:
            sources = staging / "sources.list"
            sources.write_text(line + "\n")
            apt = ["apt-get", *_apt_options(staging / "apt", sources)]
            _run([*apt, "update"], f"apt-get update ({line})")
            shown = _run(
                ["apt-cache", *_apt_options(staging / "apt", sources), "show", PACKAGE],
                f"apt-cache show {PACKAGE}",
            )
            versions = re.findall(r"^Version: (\S+)$", shown, re.MULTILINE)
            if not versions:
                raise TpmSetupError(f"{PACKAGE} not found in {line}")
            version = max(versions, key=version_tuple)
            if version_tuple(version) < MIN_VERSION:
                raise TpmSetupError(f"{line} has {PACKAGE} {version}, need >= 1.2")
            downloads = staging / "download"
            downloads.mkdir()
            _run([*apt, "download", f"{PACKAGE}={version}"], "apt-get download", cwd=downloads)
            debs = list(downloads.glob("*.deb"))
            if len(debs) != 1:
                raise TpmSetupError(f"apt-get download left {debs}")
            unpacked = staging / version
            _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], "dpkg-deb -x")
            module = unpacked / MODULE_RELATIVE
            if not module.is_file():
                raise TpmSetupError(f"{debs[0].name} holds no {MODULE_RELATIVE}")
            final = home / version
            write_openssl_conf(unpacked / "openssl.cnf", final / MODULE_RELATIVE)
            (unpacked / _MARKER).write_text(line + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(unpacked, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    ready = complete()
    assert ready is not None
    return ready


def ensure_provider(root: Path | None = None) -> Provider:
    """A tpm2 provider >= 1.2: the system's when good enough, else trixie's (cached)."""
    root = cache_root() if root is None else root
    version = installed_version()
    if version is not None and version_tuple(version) >= MIN_VERSION:
        done = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=False)
        modules = [Path(p) for p in done.stdout.splitlines() if p.endswith("/tpm2.so")]
        if modules:
            conf = root / PACKAGE / f"system-{version}" / "openssl.cnf"
            return Provider(modules[0], version, write_openssl_conf(conf, modules[0]))
    return fetch_provider(root, archive_source())


# -- swtpm --------------------------------------------------------------------------------


def _free_port_pair(host: str) -> int:
    """A port N such that N and N + 1 were both free a moment ago (bounded search)."""
    for _ in range(200):
        with socket.socket() as first, socket.socket() as second:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            try:
                second.bind((host, port + 1))
            except OSError:
                continue
            return port
    raise TpmSetupError(f"no two consecutive free ports on {host}")


class SwTpm:
    """One ``swtpm socket --tpm2`` on loopback, with its own state directory."""

    def __init__(self, state_dir: Path, host: str = LOOPBACK) -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "swtpm.log"

    @property
    def ctrl_port(self) -> int:
        """The control channel's port (the server port + 1, as the swtpm TCTI expects)."""
        return self.port + 1

    @property
    def tcti(self) -> str:
        """The ``TPM2OPENSSL_TCTI`` / ``TPM2TOOLS_TCTI`` value for this TPM."""
        return f"swtpm:host={self.host},port={self.port}"

    @property
    def pid(self) -> int:
        """The swtpm process id."""
        assert self.process is not None, "swtpm is not running"
        return self.process.pid

    def env(self, provider: Provider, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for a child process that uses this TPM through ``provider``."""
        env = dict(os.environ if base is None else base)
        env["OPENSSL_CONF"] = str(provider.openssl_conf)
        env["TPM2OPENSSL_TCTI"] = self.tcti
        env["TPM2TOOLS_TCTI"] = self.tcti
        return env

    def _ioctl(self, flag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["swtpm_ioctl", "--tcp", f"{self.host}:{self.ctrl_port}", flag],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )

    def start(self, *, same_port: bool = False) -> SwTpm:
        """Start swtpm and wait until its control channel answers.

        ``same_port``: listen where the last run did (a client's TCTI names the port).
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        last = ""
        keep = same_port and self.port != 0
        for _ in range(START_ATTEMPTS):
            if not keep:
                self.port = _free_port_pair(self.host)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [
                        "swtpm",
                        "socket",
                        "--tpm2",
                        "--tpmstate",
                        f"dir={self.state_dir}",
                        "--server",
                        f"type=tcp,port={self.port},bindaddr={self.host}",
                        "--ctrl",
                        f"type=tcp,port={self.ctrl_port},bindaddr={self.host}",
                        "--flags",
                        "not-need-init,startup-clear",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            process = self.process

            def settled(process: subprocess.Popen[bytes] = process) -> bool:
                return process.poll() is not None or self._ioctl("-c").returncode == 0

            wait_until(settled, timeout_s=START_TIMEOUT_S, what="swtpm's control channel")
            if process.poll() is None:
                return self
            last = self.log_path.read_text(errors="replace")[-500:]  # lost the port race
        raise TpmSetupError(f"swtpm did not start in {START_ATTEMPTS} attempts: {last}")

    def stop(self) -> None:
        """``swtpm_ioctl -s`` (orderly shutdown), then kill by PID if it is still running."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self._ioctl("-s")
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.process = None

    def restart(self) -> SwTpm:
        """Stop and start again on the same state (keys made before still load)."""
        self.stop()
        return self.start()

    def flush_transient(self) -> None:
        """Flush every transient object (what a SIGKILLed key holder leaks)."""
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        done = subprocess.run(
            ["tpm2_flushcontext", "-t"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            raise TpmSetupError(f"tpm2_flushcontext -t: {done.stderr[-500:]}")

    def __enter__(self) -> SwTpm:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# -- using a TPM key from a child process ---------------------------------------------------


def openssl(
    *args: str, env: Mapping[str, str], timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``openssl ARGS`` with ``env`` (which carries OPENSSL_CONF / the TCTI)."""
    return subprocess.run(
        ["openssl", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def create_tpm_key(path: Path, env: Mapping[str, str], curve: str = "P-256") -> Path:
    """An EC key generated inside the TPM (the provider forced), as a TSS2 PEM file."""
    done = openssl(
        "genpkey",
        "-propquery",
        "?provider=tpm2",
        "-algorithm",
        "EC",
        "-pkeyopt",
        f"group:{curve}",
        "-out",
        str(path),
        env=env,
    )
    if done.returncode != 0:
        raise TpmSetupError(f"openssl genpkey in the TPM failed: {done.stderr[-1000:]}")
    return path


def tpm_csr_der(key: Path, common_name: str, env: Mapping[str, str]) -> bytes:
    """A PKCS#10 CSR (DER) signed by the TPM key, as ``openssl req`` makes it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "req.der"
        done = openssl(
            "req",
            "-new",
            "-key",
            str(key),
            "-subj",
            f"/CN={common_name}",
            "-outform",
            "DER",
            "-out",
            str(out),
            env=env,
        )
        if done.returncode != 0:
            raise TpmSetupError(f"openssl req with the TPM key failed: {done.stderr[-1000:]}")
        return out.read_bytes()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(name="tpm2_provider", scope="session")
def tpm2_provider_fixture() -> Provider:
    """A tpm2-openssl provider >= 1.2 and an OPENSSL_CONF that loads it (cached)."""
    return ensure_provider()


@pytest.fixture(name="swtpm")
def swtpm_fixture(tmp_path: Path) -> Iterator[SwTpm]:
    """A fresh swtpm for one test (its own state, ports; stopped at teardown)."""
    with SwTpm(tmp_path / "swtpm") as tpm:
        yield tpm
