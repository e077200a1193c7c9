"""What the agent keeps on disk: its assignment, its reprovisioning budget, its live status.

Theory of operation
-------------------
Three small JSON files in the state directory, each written atomically (temp file
in the same directory, fsync, rename over the old one, fsync the directory), so a
power cut leaves either the old or the new file, never half of one:

``state.json``
    The DPS assignment, with a schema version and a fingerprint of the identity it
    was made for: SHA-256 over (DPS host, ID scope, registration id, certificate
    thumbprint). A later boot uses it only if every part matches; a new certificate
    or an image cloned with state inside it gets a mismatch, and the file is
    discarded (with a logged reason) so the device provisions again. A file that
    cannot be read as the current schema is moved aside to
    ``state.json.corrupt-<timestamp>`` (the newest few are kept) and never crashes
    the agent.
``reprovision-budget.json``
    Wall-clock times of recent DPS registrations. At most ``limit`` per sliding
    ``window_s``; it survives restarts, so a crash loop cannot storm DPS. It is not
    bound to the identity: a device that keeps changing certificates is still
    limited. Clock jumps: a recorded time in the future (the clock went back) is
    clamped to now, so it still counts for a full window; a jump forward can only
    make attempts expire early, which is the lesser harm.
``status.json``
    The running daemon's live status, rewritten on each lifecycle change, read by
    ``device-agent status`` (no socket server needed).
``identity-cache.json``
    Owned by :mod:`agent.identity`: the identity as the last full keystore check
    found it, so a warm boot with unchanged files needs no check child. Only its
    name lives here, so that ``image-prep`` (:func:`strip_state`) removes it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.core import Clock, utc_iso
from agent.errors import StateError
from agent.provisioning import Assignment

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
BUDGET_FILE = "reprovision-budget.json"
STATUS_FILE = "status.json"
#: Written by :mod:`agent.identity` (the identity checked at the last full check).
IDENTITY_CACHE_FILE = "identity-cache.json"
#: How many ``*.corrupt-*`` copies to keep per file.
KEEP_CORRUPT_COPIES = 3
#: A recorded time further than this in the future means the clock went back.
CLOCK_SLACK_S = 60.0


# --- atomic files --------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_json_object(path: Path) -> dict[str, object] | None:
    """The JSON object in ``path``, None if absent; StateError if unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(path, f"cannot read: {exc.strerror}") from exc
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateError(path, f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StateError(path, "not a JSON object")
    return value


def _set_aside(path: Path, now_s: float) -> Path | None:
    """Move a corrupt file to ``<name>.corrupt-<ts>``, keeping the newest few."""
    target = path.with_name(f"{path.name}.corrupt-{int(now_s)}")
    try:
        os.replace(path, target)
    except OSError as exc:
        log.warning("could not move corrupt %s aside: %s", path, exc)
        return None
    copies = sorted(path.parent.glob(f"{path.name}.corrupt-*"), key=lambda p: p.stat().st_mtime)
    for old in copies[:-KEEP_CORRUPT_COPIES]:
        with contextlib.suppress(OSError):
            old.unlink()
    return target


# --- identity binding --------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityFingerprint:
    """The parts of an identity a cached assignment is only valid for."""

    dps_host: str
    id_scope: str
    registration_id: str
    cert_thumbprint: str

    def digest(self) -> str:
        """SHA-256 hex over the parts, unambiguously joined."""
        parts = [
            self.dps_host.lower(),
            self.id_scope,
            self.registration_id,
            self.cert_thumbprint.upper(),
        ]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PersistedState:
    """What ``state.json`` holds."""

    fingerprint: str
    assignment: Assignment
    last_reprovision_reason: str | None
    saved_at: str


def _state_to_json(state: PersistedState) -> bytes:
    a = state.assignment
    doc = {
        "schema": SCHEMA_VERSION,
        "fingerprint": state.fingerprint,
        "savedAt": state.saved_at,
        "lastReprovisionReason": state.last_reprovision_reason,
        "assignment": {
            "assignedHub": a.assigned_hub,
            "deviceId": a.device_id,
            "provisionedAt": a.provisioned_at,
            "substatus": a.substatus,
            "payload": a.payload,
        },
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _state_from_json(path: Path, doc: Mapping[str, object]) -> PersistedState:
    if doc.get("schema") != SCHEMA_VERSION:
        raise StateError(path, f"schema {doc.get('schema')!r}, expected {SCHEMA_VERSION}")
    fingerprint = doc.get("fingerprint")
    assignment = doc.get("assignment")
    reason = doc.get("lastReprovisionReason")
    saved_at = doc.get("savedAt", "")
    if not isinstance(fingerprint, str) or not isinstance(assignment, dict):
        raise StateError(path, "missing fingerprint or assignment")
    hub, device_id = assignment.get("assignedHub"), assignment.get("deviceId")
    provisioned_at, substatus = assignment.get("provisionedAt", ""), assignment.get("substatus")
    if not (isinstance(hub, str) and hub and isinstance(device_id, str) and device_id):
        raise StateError(path, "assignment lacks assignedHub/deviceId")
    if not isinstance(provisioned_at, str) or not (substatus is None or isinstance(substatus, str)):
        raise StateError(path, "assignment has fields of the wrong type")
    if not (reason is None or isinstance(reason, str)) or not isinstance(saved_at, str):
        raise StateError(path, "fields of the wrong type")
    return PersistedState(
        fingerprint=fingerprint,
        assignment=Assignment(hub, device_id, provisioned_at, substatus, assignment.get("payload")),
        last_reprovision_reason=reason,
        saved_at=saved_at,
    )


# --- the budget -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReprovisionBudget:
    """At most ``limit`` DPS registrations per sliding ``window_s`` (wall-clock times)."""

    limit: int
    window_s: float
    attempts: tuple[float, ...] = ()

    def pruned(self, now_s: float) -> ReprovisionBudget:
        """Drop attempts outside the window; clamp future ones (clock went back) to now."""
        kept = sorted(
            min(t, now_s) if t > now_s + CLOCK_SLACK_S else t
            for t in self.attempts
            if t > now_s - self.window_s
        )
        return ReprovisionBudget(self.limit, self.window_s, tuple(kept[-max(self.limit, 0) :]))

    def allows(self, now_s: float) -> bool:
        """Whether a registration may start now."""
        return len(self.pruned(now_s).attempts) < self.limit

    def next_allowed_at(self, now_s: float) -> float:
        """The earliest wall-clock time a registration may start (``now_s`` if now)."""
        attempts = self.pruned(now_s).attempts
        if len(attempts) < self.limit:
            return now_s
        return attempts[len(attempts) - self.limit] + self.window_s

    def recorded(self, now_s: float) -> ReprovisionBudget:
        """This budget with one more registration at ``now_s``."""
        pruned = self.pruned(now_s)
        return ReprovisionBudget(self.limit, self.window_s, (*pruned.attempts, now_s))


# --- the store ------------------------------------------------------------------------------


class StateStore:
    """The state directory, bound to one identity.

    ``fingerprint=None``: no usable identity yet (the daemon waits for one); the budget
    and the status file work, :meth:`load` finds nothing and :meth:`save` refuses until
    :meth:`bind` names the identity.
    """

    def __init__(
        self, directory: Path, fingerprint: IdentityFingerprint | None, *, clock: Clock
    ) -> None:
        self.directory = directory
        self.fingerprint = fingerprint.digest() if fingerprint is not None else None
        self._clock = clock
        #: Why the last :meth:`load` found nothing usable (None if it did, or if no file).
        self.discard_reason: str | None = None

    def bind(self, fingerprint: IdentityFingerprint) -> None:
        """Bind the store to ``fingerprint`` (an identity loaded, or a new one)."""
        self.fingerprint = fingerprint.digest()

    @property
    def state_path(self) -> Path:
        """``state.json``."""
        return self.directory / STATE_FILE

    def ensure_directory(self) -> None:
        """Create the directory (mode 0700) if it is missing."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def load(self) -> PersistedState | None:
        """The cached assignment for this identity, or None (never raises for bad content)."""
        self.discard_reason = None
        path = self.state_path
        if self.fingerprint is None:
            return None
        try:
            doc = _read_json_object(path)
            if doc is None:
                return None
            state = _state_from_json(path, doc)
        except StateError as exc:
            copy = _set_aside(path, self._clock.time())
            self.discard_reason = f"corrupt state discarded ({exc.problem}); copy at {copy}"
            log.warning("%s", self.discard_reason)
            return None
        if state.fingerprint != self.fingerprint:
            self.discard_reason = (
                "state belongs to another identity (DPS host, ID scope, registration id "
                "or certificate changed); discarded, provisioning again"
            )
            log.warning("%s: %s", path, self.discard_reason)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return state

    def save(self, assignment: Assignment, *, reason: str | None) -> PersistedState:
        """Persist ``assignment`` for this identity."""
        if self.fingerprint is None:
            raise StateError(self.state_path, "no identity bound: nothing to persist for")
        state = PersistedState(self.fingerprint, assignment, reason, utc_iso(self._clock.time()))
        self.ensure_directory()
        atomic_write(self.state_path, _state_to_json(state))
        return state

    def load_budget(self, limit: int, window_s: float) -> ReprovisionBudget:
        """The budget on disk (empty if absent; a corrupt file is set aside)."""
        path = self.directory / BUDGET_FILE
        empty = ReprovisionBudget(limit, window_s)
        try:
            doc = _read_json_object(path)
        except StateError as exc:
            copy = _set_aside(path, self._clock.time())
            log.warning("corrupt budget file discarded (%s); copy at %s", exc.problem, copy)
            return empty
        if doc is None:
            return empty
        attempts = doc.get("attempts")
        if not isinstance(attempts, list) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in attempts
        ):
            copy = _set_aside(path, self._clock.time())
            log.warning("budget file has no usable 'attempts'; copy at %s", copy)
            return empty
        times = tuple(float(t) for t in attempts)
        return ReprovisionBudget(limit, window_s, times).pruned(self._clock.time())

    def save_budget(self, budget: ReprovisionBudget) -> None:
        """Persist the budget's attempts."""
        self.ensure_directory()
        doc = {"schema": SCHEMA_VERSION, "attempts": list(budget.attempts)}
        atomic_write(self.directory / BUDGET_FILE, json.dumps(doc).encode("utf-8") + b"\n")

    def write_status(self, status: Mapping[str, object]) -> None:
        """Publish the daemon's live status for ``device-agent status``."""
        self.ensure_directory()
        doc = {**status, "pid": os.getpid(), "updatedAt": utc_iso(self._clock.time())}
        atomic_write(
            self.directory / STATUS_FILE,
            json.dumps(doc, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n",
            mode=0o644,
        )


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(state_dir: Path) -> dict[str, object]:
    """Everything ``device-agent status`` shows: cached assignment, budget, live daemon.

    Never raises for bad content: unreadable parts are reported under ``"errors"``.
    """
    errors: list[str] = []
    result: dict[str, object] = {"stateDir": str(state_dir)}
    try:
        doc = _read_json_object(state_dir / STATE_FILE)
        state = _state_from_json(state_dir / STATE_FILE, doc) if doc is not None else None
    except StateError as exc:
        errors.append(str(exc))
        state = None
    if state is not None:
        a = state.assignment
        result["assignment"] = {
            "assignedHub": a.assigned_hub,
            "deviceId": a.device_id,
            "provisionedAt": a.provisioned_at,
        }
        result["lastReprovisionReason"] = state.last_reprovision_reason
        result["savedAt"] = state.saved_at
    else:
        result["assignment"] = None
    try:
        budget = _read_json_object(state_dir / BUDGET_FILE)
        result["reprovisionAttempts"] = budget.get("attempts") if budget else []
    except StateError as exc:
        errors.append(str(exc))
    try:
        live = _read_json_object(state_dir / STATUS_FILE)
    except StateError as exc:
        errors.append(str(exc))
        live = None
    running = live is not None and _pid_alive(live.get("pid")) and live.get("state") != "STOPPED"
    result["running"] = running
    result["live"] = live
    result["errors"] = errors
    return result


def strip_state(state_dir: Path) -> list[Path]:
    """Remove every state file (for ``image-prep``); returns what was removed."""
    removed: list[Path] = []
    if not state_dir.is_dir():
        return removed
    for path in sorted(state_dir.iterdir()):
        if path.is_file() and (
            path.name in (STATE_FILE, BUDGET_FILE, STATUS_FILE, IDENTITY_CACHE_FILE)
            or ".corrupt-" in path.name
        ):
            path.unlink()
            removed.append(path)
    return removed
