"""Small files written atomically, and read without trusting their content.

Every file in the state directory is replaced atomically (temp file in the same
directory, fsync, rename over the old one, fsync the directory), so a power cut leaves
either the old or the new file, never half of one. A file that cannot be read as
expected is moved aside to ``<name>.corrupt-<timestamp>`` (the newest few kept).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
from pathlib import Path

from agent.errors import StateError
from agent.fileio import read_small_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
BUDGET_FILE = "reprovision-budget.json"
STATUS_FILE = "status.json"
#: Written by :mod:`agent.identity.cache` (the identity checked at the last full check).
IDENTITY_CACHE_FILE = "identity-cache.json"
#: How many ``*.corrupt-*`` copies to keep per file.
KEEP_CORRUPT_COPIES = 3


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and (``durable``) durably.

    Something that is not a regular file in the way (a directory, a FIFO) is moved aside
    as a corrupt copy first, so a file the agent only writes does not stay unwritable.
    ``durable=False`` skips both fsyncs: a reader still sees the old or the new file,
    never half of one, but a power cut may lose the new one (for files that describe the
    running process only, rewritten at every start).
    """
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                copy = set_aside(path, time.time())
                log.warning("%s was not a regular file; set aside as %s", path, copy)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over the start of the existing ``path`` and fsync it; no new blocks.

    For a full disk only: not atomic (a power cut in the middle can tear it, which the
    reader then treats as corrupt). ``data`` must not be longer than the file, whose
    length is kept (so the caller pads to a fixed size). Raises ``OSError``.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size < len(data):
            raise OSError(errno.ENOSPC, "no room to grow the file in place", str(path))
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_object(path: Path) -> dict[str, object] | None:
    """The JSON object in ``path``, None if absent; StateError if unreadable."""
    try:
        raw = read_small_file(path)
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


def set_aside(path: Path, now_s: float) -> Path | None:
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
