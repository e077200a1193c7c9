"""Logging set-up: stderr, or journald when systemd connected us to it.

Theory of operation
-------------------
Under systemd, ``JOURNAL_STREAM`` holds the ``device:inode`` of the journal stream our
stderr is connected to. Only when it is set *and* matches stderr *and* the optional
``systemd-python`` imports do we log through :class:`systemd.journal.JournalHandler`
(structured fields, priorities). Without the library, stderr still goes to journald,
so each line carries a ``<N>`` syslog priority prefix that journald understands
(``SyslogLevelPrefix=`` is on by default) and no timestamp (journald adds its own).
Anywhere else (a terminal, a test, a pipe) lines go to stderr with a timestamp.
"stderr" means whatever ``sys.stderr`` is when a line is written, not the object it
was at set-up: code that swaps ``sys.stderr`` (pytest's capture, an in-process
``main()``) and closes the old one must not leave a handler writing to a closed file.
``systemd.journal`` is never used without ``JOURNAL_STREAM``: with no journald socket it
silently drops every message.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Literal, TextIO

__all__ = ["LogDestination", "setup_logging"]

LogDestination = Literal["journald", "journald-stderr", "stderr"]

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_MARK = "_device_agent_handler"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes to the current ``sys.stderr`` (as ``logging.lastResort``)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


class _OneLineFormatter(logging.Formatter):
    """A log record's message is one line: control characters escaped (no forged lines).

    Tracebacks (``exc_info``) keep their lines; they are the agent's own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = "".join(
            c if c >= " " and c not in "\x7f\u2028\u2029\x85" else repr(c)[1:-1]
            for c in record.message
        )
        return super().formatMessage(record)


class _PriorityFormatter(_OneLineFormatter):
    """Prefixes each line with its syslog priority, ``<N>``, for journald's stream parser."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < 30 else 3)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def setup_logging(
    level: str = "INFO",
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> LogDestination:
    """Configure the root logger once (calling again replaces our handler); say where it goes."""
    env = os.environ if environ is None else environ
    out = sys.stderr if stream is None else stream
    new_handler: Callable[[], logging.Handler] = (
        _StderrHandler if stream is None else lambda: logging.StreamHandler(stream)
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()

    handler: logging.Handler
    destination: LogDestination
    if _stream_is_journal(env.get("JOURNAL_STREAM", ""), out):
        journal = _journal_handler()
        if journal is not None:
            handler, destination = journal, "journald"
        else:
            handler = new_handler()
            handler.setFormatter(_PriorityFormatter("%(name)s: %(message)s"))
            destination = "journald-stderr"
    else:
        handler = new_handler()
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        destination = "stderr"
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return destination


def _stream_is_journal(journal_stream: str, out: TextIO) -> bool:
    device, _, inode = journal_stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(out.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="device-agent")
    return handler
