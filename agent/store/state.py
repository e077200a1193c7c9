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
    Wall-clock times of recent DPS registrations: the attempts of a
    :class:`~agent.core.budget.ReprovisionBudget` (the rule itself lives in the core).
    It survives restarts, so a crash loop cannot storm DPS. It is not bound to the
    identity: a device that keeps changing certificates is still limited.
``status.json``
    The running daemon's live status, rewritten on each lifecycle change, read by
    ``device-agent status`` (no socket server needed).
``identity-cache.json``
    Owned by :mod:`agent.identity.cache`: the identity as the last full keystore
    check found it, so a warm boot with unchanged files needs no check child. Only
    its name lives here (:mod:`agent.store.files`), so that ``image-prep``
    (:func:`agent.store.status.strip_state`) removes it too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.core.assignment import Assignment
from agent.core.budget import ReprovisionBudget
from agent.core.clock import Clock, utc_iso
from agent.errors import StateError
from agent.store.files import (
    BUDGET_FILE,
    SCHEMA_VERSION,
    STATE_FILE,
    STATUS_FILE,
    atomic_write,
    overwrite_in_place,
    read_json_object,
    set_aside,
)

log = logging.getLogger(__name__)


def budget_file_size(limit: int) -> int:
    """The fixed size of the budget file for ``limit`` attempts (JSON padded with spaces)."""
    return 64 + 24 * max(limit, 1)


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


def state_to_json(state: PersistedState) -> bytes:
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


def state_from_json(path: Path, doc: Mapping[str, object]) -> PersistedState:
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
            doc = read_json_object(path)
            if doc is None:
                return None
            state = state_from_json(path, doc)
        except StateError as exc:
            copy = set_aside(path, self._clock.time())
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
        atomic_write(self.state_path, state_to_json(state))
        return state

    def load_budget(self, limit: int, window_s: float) -> ReprovisionBudget:
        """The budget on disk (empty if absent; a corrupt file is set aside)."""
        path = self.directory / BUDGET_FILE
        empty = ReprovisionBudget(limit, window_s)
        try:
            doc = read_json_object(path)
        except StateError as exc:
            copy = set_aside(path, self._clock.time())
            log.warning("corrupt budget file discarded (%s); copy at %s", exc.problem, copy)
            return empty
        if doc is None:
            return empty
        attempts = doc.get("attempts")
        if not isinstance(attempts, list) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in attempts
        ):
            copy = set_aside(path, self._clock.time())
            log.warning("budget file has no usable 'attempts'; copy at %s", copy)
            return empty
        times = tuple(float(t) for t in attempts)
        return ReprovisionBudget(limit, window_s, times).pruned(self._clock.time())

    def save_budget(self, budget: ReprovisionBudget) -> None:
        """Persist the budget's attempts, even on a full disk.

        The file is padded to a fixed size (:func:`budget_file_size`), so that when the
        atomic replace fails for want of space (``ENOSPC``/``EDQUOT``: the temp file needs
        new blocks) the same bytes can overwrite the existing file in place, which needs
        none. The budget must hold across restarts precisely when the disk is full and
        nothing else can be saved. Raises ``OSError`` if neither works.
        """
        self.ensure_directory()
        path = self.directory / BUDGET_FILE
        doc = {"schema": SCHEMA_VERSION, "attempts": list(budget.attempts)}
        text = json.dumps(doc).encode("utf-8")
        data = text.ljust(max(budget_file_size(budget.limit), len(text) + 1) - 1) + b"\n"
        try:
            atomic_write(path, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            overwrite_in_place(path, data)
            log.warning("state disk full: reprovisioning budget updated in place (%s)", path)

    def reserve_budget(self, limit: int) -> None:
        """Create the (padded) budget file if there is none, so a full disk later can
        still update it in place. Raises ``OSError``."""
        if not (self.directory / BUDGET_FILE).exists():
            self.save_budget(ReprovisionBudget(limit, 1.0))

    def write_status(self, status: Mapping[str, object]) -> None:
        """Publish the daemon's live status for ``device-agent status``.

        Atomic but not fsync-ed: it describes the running process, which rewrites it at
        start, so a power cut may cost the last refresh and nothing else, and the periodic
        refresh neither blocks the loop on the flash nor wears it with syncs.
        """
        self.ensure_directory()
        doc = {**status, "pid": os.getpid(), "updatedAt": utc_iso(self._clock.time())}
        atomic_write(
            self.directory / STATUS_FILE,
            json.dumps(doc, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n",
            mode=0o644,
            durable=False,
        )
