"""What ``device-agent status`` and ``image-prep`` read and remove in the state directory."""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import StateError
from agent.store.files import (
    BUDGET_FILE,
    IDENTITY_CACHE_FILE,
    STATE_FILE,
    STATUS_FILE,
    read_json_object,
)
from agent.store.state import state_from_json


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
        doc = read_json_object(state_dir / STATE_FILE)
        state = state_from_json(state_dir / STATE_FILE, doc) if doc is not None else None
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
        budget = read_json_object(state_dir / BUDGET_FILE)
        result["reprovisionAttempts"] = budget.get("attempts") if budget else []
    except StateError as exc:
        errors.append(str(exc))
    try:
        live = read_json_object(state_dir / STATUS_FILE)
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
