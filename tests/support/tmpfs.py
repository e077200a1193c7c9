"""A small tmpfs of the test's own, to fill up: a disk-full without root or loop devices.

:func:`small_tmpfs_argv` wraps a command so that it runs in a new mount namespace (as a
mapped root user, so no privileges are needed) with a tmpfs of ``size_kib`` mounted on
``mountpoint``. The mount vanishes with the namespace; nothing on the host changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

_MOUNT_THEN_EXEC = 'mount -t tmpfs -o size="$1"k tmpfs "$2" && shift 2 && exec "$@"'


def small_tmpfs_argv(mountpoint: Path, size_kib: int, command: Sequence[str]) -> list[str]:
    """``command`` with a ``size_kib`` KiB tmpfs on ``mountpoint`` (which must exist)."""
    return [
        "unshare",
        "--mount",
        "--map-root-user",
        "sh",
        "-c",
        _MOUNT_THEN_EXEC,
        "sh",
        str(size_kib),
        str(mountpoint),
        *command,
    ]


def fill(directory: Path, name: str = "filler") -> Path:
    """Write zeros into ``directory/name`` until the filesystem is full; return the file."""
    path = directory / name
    chunk = b"\0" * 1024
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(1 << 20):  # bounded: 4 GiB at most
            try:
                os.write(fd, chunk)
            except OSError:
                break
    finally:
        os.close(fd)
    return path
