"""Bounded reads of the agent's own small files: config, state, identity, caches.

:func:`read_small_file` refuses, with :class:`FileRefusedError` (an ``OSError``) saying
why, anything that is not a regular file -- a FIFO (which would block the read
forever), a device such as ``/dev/zero`` (which never ends) -- and any file larger than
the caller's bound, *before* reading it, so a bad path never hangs the agent nor runs
it out of memory. It opens with ``O_NONBLOCK`` so that even opening a FIFO returns.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: The default bound for the agent's own files (its config, state, certificates).
MAX_SMALL_FILE_BYTES = 1024 * 1024


class FileRefusedError(OSError):
    """A path that is not a regular file, or a file over its size bound."""


def read_small_file(path: Path, *, max_bytes: int = MAX_SMALL_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Raises :class:`FileRefusedError` for anything else, and the ``OSError`` of the open
    (``FileNotFoundError``, ``PermissionError``, ...) as is.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO, " if stat.S_ISFIFO(st.st_mode) else ""
            raise FileRefusedError(errno.EINVAL, f"{kind}not a regular file: refused", str(path))
        if st.st_size > max_bytes:
            raise FileRefusedError(
                errno.EFBIG,
                f"too large: {st.st_size} bytes, more than the {max_bytes} allowed",
                str(path),
            )
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(65536, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while being read
            raise FileRefusedError(
                errno.EFBIG, f"more than the {max_bytes} bytes allowed", str(path)
            )
        return b"".join(chunks)
    finally:
        os.close(fd)
