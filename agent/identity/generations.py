"""Which operational certificate and key are current, switched by one atomic write.

Theory of operation
-------------------
A renewal must never lose a working identity, whatever moment the process is killed at.
So the current pair is never modified. A renewal writes a *candidate* pair under fresh
names beside it (``operational-<stamp>.pem`` and ``.key`` / ``.tss2``); only after a
hub connection with the candidate succeeds does :func:`commit` point
``operational.json`` at it — one atomic write (temporary file, fsync, rename), so the
pointer names either the old pair or the new, complete pair. A candidate the hub refuses
is deleted (:func:`discard`): the old pair was current all along. At start,
:func:`cleanup_uncommitted` deletes candidates a killed run left behind. Without a
pointer file the current pair is the configured ``operational_cert_path`` /
``operational_key_path`` (what the first issuance wrote).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from agent.config import IdentityConfig
from agent.store.files import atomic_write

__all__ = ["candidate_paths", "cleanup_uncommitted", "commit", "current_paths", "discard"]

POINTER = "operational.json"
_PREFIX = "operational-"


def _pointer(config: IdentityConfig) -> Path:
    return config.operational_cert.with_name(POINTER)


def current_paths(config: IdentityConfig) -> tuple[Path, Path]:
    """The current operational (chain, key): the pointer's, else the configured paths."""
    try:
        doc = json.loads(_pointer(config).read_text())
        cert, key = Path(str(doc["cert"])), Path(str(doc["key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return config.operational_cert, config.operational_key
    return cert, key


def candidate_paths(config: IdentityConfig, stamp: int) -> tuple[Path, Path]:
    """Fresh names for a renewal's chain and key, beside the current ones."""
    directory = config.operational_cert.parent
    suffix = ".tss2" if config.keystore == "tpm" else ".key"
    return directory / f"{_PREFIX}{stamp}.pem", directory / f"{_PREFIX}{stamp}{suffix}"


def commit(config: IdentityConfig, cert: Path, key: Path) -> None:
    """Make (cert, key) the current pair (atomically), then remove the previous pair."""
    old_cert, old_key = current_paths(config)
    doc = json.dumps({"cert": str(cert), "key": str(key)}, sort_keys=True).encode()
    atomic_write(_pointer(config), doc, mode=0o644)
    for path in (old_cert, old_key):
        if path not in (cert, key):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def discard(cert: Path, key: Path) -> None:
    """Delete a candidate pair (never the current one)."""
    for path in (cert, key):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def cleanup_uncommitted(config: IdentityConfig) -> list[Path]:
    """Delete candidate files no pointer names (a run killed mid-renewal); return them."""
    directory = config.operational_cert.parent
    if not directory.is_dir():
        return []
    keep = set(current_paths(config))
    removed = []
    for path in directory.glob(f"{_PREFIX}*"):
        if path in keep or path.name.startswith("."):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
