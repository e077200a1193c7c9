"""Microsoft's ``azure-iot-device`` SDK, unmodified, in its own cached virtualenv.

Theory of operation
-------------------
The SDK 2.14.0 pins paho-mqtt < 2 while the project uses paho-mqtt 2.x, so the SDK
gets a virtualenv of its own. :func:`ensure_venv` builds it once per set of inputs
(the pinned requirement lines and the Python version) under
``${DEVICE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/device-agent}/refsdk-<hash>``:

1. take an exclusive ``flock`` on ``refsdk-<hash>.lock`` (polled with a deadline), so
   two test runs never build the same venv at once;
2. if the venv exists and carries its ``.complete`` marker, use it;
3. otherwise remove temporary folders a killed run left, create the venv in a fresh
   temporary folder, ``pip install`` the requirements, import-check the SDK, write
   the marker, and ``rename`` the folder into place. A run killed at any point leaves
   either nothing or a complete venv. (Only ``bin/python`` is ever invoked; pip's own
   console scripts keep the temporary path in their shebangs and are not used.)

The SDK runs in subprocesses (``tests/support/refsdk_scripts/*.py``) that print one
JSON object per line on stdout (``{"event": ...}``) and, for interactive scripts, read
one JSON command per line on stdin. :class:`SDKProcess` collects those events on a
reader thread so tests wait for them with a deadline (never a fixed sleep) and
always kill the process at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

#: What the reference venv holds. Changing a line makes a new cache key.
REQUIREMENTS: tuple[str, ...] = ("azure-iot-device==2.14.0",)
#: Where the SDK scripts live.
SCRIPTS_DIR = Path(__file__).resolve().parent / "refsdk_scripts"
#: Bound on waiting for another process that builds the same venv.
LOCK_TIMEOUT_S = 900.0
#: Bound on ``pip install``.
INSTALL_TIMEOUT_S = 600.0
_MARKER = ".complete"
#: stderr lines kept per script (a conformance script logs a few hundred).
MAX_STDERR_LINES = 20_000

Event = dict[str, Any]


class RefSDKError(RuntimeError):
    """The reference venv could not be built, or an SDK script misbehaved."""


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$DEVICE_AGENT_CACHE``, else ``${XDG_CACHE_HOME:-$HOME/.cache}/device-agent``."""
    env = os.environ if environ is None else environ
    if env.get("DEVICE_AGENT_CACHE"):
        return Path(env["DEVICE_AGENT_CACHE"])
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "device-agent"


def cache_key(requirements: Sequence[str] = REQUIREMENTS, python: str | None = None) -> str:
    """Hash of the inputs that decide the venv's contents: requirements and Python version."""
    version = python or ".".join(str(part) for part in sys.version_info[:3])
    text = "\n".join([f"python {version} {sys.implementation.name}", *sorted(requirements)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout_s: float) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as lock_file:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RefSDKError(
                        f"{lock_path}: still locked after {timeout_s:.0f} s "
                        "(another run building the SDK venv?)"
                    ) from None
                time.sleep(0.2)  # polling a lock held by another process; no event to await
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _run(argv: Sequence[str], timeout_s: float) -> None:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise RefSDKError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}"
            f"\n{done.stderr[-4000:]}"
        )


def ensure_venv(
    requirements: Sequence[str] = REQUIREMENTS,
    *,
    root: Path | None = None,
    base_python: str = sys.executable,
) -> Path:
    """Return the ``bin/python`` of the reference venv, building it if needed (see module doc)."""
    root = cache_root() if root is None else root
    key = cache_key(requirements)
    final = root / f"refsdk-{key}"
    python = final / "bin" / "python"
    if (final / _MARKER).is_file():
        return python
    with _exclusive(root / f"refsdk-{key}.lock", LOCK_TIMEOUT_S):
        if (final / _MARKER).is_file():
            return python
        for stale in root.glob(f".refsdk-{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # no marker: not ours to trust
            shutil.rmtree(final)
        staging = Path(tempfile.mkdtemp(prefix=f".refsdk-{key}.tmp-", dir=root))
        try:
            _run([base_python, "-m", "venv", str(staging)], 120)
            staged_python = str(staging / "bin" / "python")
            _run(
                [staged_python, "-m", "pip", "install", "--no-input", "-q", *requirements],
                INSTALL_TIMEOUT_S,
            )
            _run([staged_python, "-c", "import azure.iot.device, paho.mqtt"], 60)
            staging.chmod(0o755)
            (staging / _MARKER).write_text("\n".join(requirements) + "\n")
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return python


# --------------------------------------------------------------------- SDK processes


@dataclass
class SDKProcess:
    """One SDK script running in the reference venv; its stdout events, its stdin commands."""

    argv: list[str]
    process: subprocess.Popen[str]
    events: list[Event] = field(default_factory=list)
    _incoming: queue.Queue[Event | None] = field(default_factory=queue.Queue)
    _stderr: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _used: set[int] = field(default_factory=set)
    _stderr_changed: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def start(
        cls,
        python: Path,
        script: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
    ) -> SDKProcess:
        """Start ``refsdk_scripts/<script>`` with ``args`` under the venv's ``python``."""
        argv = [str(python), str(SCRIPTS_DIR / script), *args]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        sdk = cls(argv=argv, process=process)
        assert process.stdout is not None and process.stderr is not None
        for target, stream in (
            (sdk._read_events, process.stdout),
            (sdk._read_stderr, process.stderr),
        ):
            thread = threading.Thread(target=target, args=(stream,), daemon=True)
            thread.start()
            sdk._threads.append(thread)
        return sdk

    def _read_events(self, stream: TextIO) -> None:
        for line in stream:
            text = line.strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                event = {"event": "non-json-output", "line": text}
            self._incoming.put(event if isinstance(event, dict) else {"event": "bad", "v": event})
        self._incoming.put(None)

    def _read_stderr(self, stream: TextIO) -> None:
        for line in stream:
            with self._stderr_changed:
                self._stderr.append(line)
                del self._stderr[:-MAX_STDERR_LINES]
                self._stderr_changed.notify_all()

    @property
    def stderr(self) -> str:
        """What the script wrote to stderr (SDK and paho logs, tracebacks)."""
        with self._stderr_changed:
            return "".join(self._stderr)

    def expect_log(self, text: str, count: int = 1, timeout_s: float = 20.0) -> None:
        """Wait until ``text`` occurs on ``count`` stderr lines (paho logs each packet)."""

        def seen() -> int:
            return sum(text in line for line in self._stderr)

        with self._stderr_changed:
            if not self._stderr_changed.wait_for(lambda: seen() >= count, timeout_s):
                problem = f"{seen()} of {count} log lines with {text!r} within {timeout_s} s"
                raise RefSDKError(self._explain(problem))

    def send(self, command: Mapping[str, Any]) -> None:
        """Write one JSON command line to the script's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(
        self,
        name: str,
        timeout_s: float = 20.0,
        where: Callable[[Event], bool] | None = None,
    ) -> Event:
        """Wait for the next event called ``name`` (matching ``where``); fail on error or exit.

        Events read while waiting stay in :attr:`events`. An ``error`` event from the
        script fails the wait unless ``name`` is ``"error"``.
        """
        deadline = time.monotonic() + timeout_s
        for index, seen in enumerate(self.events):
            if index not in self._used and self._matches(seen, name, where):
                self._used.add(index)
                return seen
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RefSDKError(self._explain(f"no {name!r} event within {timeout_s} s"))
            try:
                event = self._incoming.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                self._incoming.put(None)  # keep reporting the end to later waits
                raise RefSDKError(self._explain(f"script ended before a {name!r} event"))
            self.events.append(event)
            if self._matches(event, name, where):
                self._used.add(len(self.events) - 1)
                return event
            if event.get("event") == "error" and name != "error":
                raise RefSDKError(self._explain(f"script reported an error waiting for {name!r}"))

    @staticmethod
    def _matches(event: Event, name: str, where: Callable[[Event], bool] | None) -> bool:
        return event.get("event") == name and (where is None or where(event))

    def _explain(self, problem: str) -> str:
        shown = "\n".join(json.dumps(event) for event in self.events[-20:])
        return (
            f"{problem}\nargv: {self.argv}\nreturn code: {self.process.poll()}\n"
            f"events:\n{shown}\nstderr (tail):\n{''.join(self._stderr[-60:])}"
        )

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        """Wait for the script to exit on its own; return its exit status."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RefSDKError(self._explain(f"still running after {timeout_s} s")) from None

    def stop(self) -> None:
        """End the script (SIGTERM, then SIGKILL) and its reader threads."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def sdk_process(
    python: Path, script: str, args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> Iterator[SDKProcess]:
    """:meth:`SDKProcess.start` as a context manager that always stops the script."""
    sdk = SDKProcess.start(python, script, args, env=env)
    try:
        yield sdk
    finally:
        sdk.stop()
