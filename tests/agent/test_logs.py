"""agent.runtime.logs: stderr by default; journald only when JOURNAL_STREAM really is our stderr."""

from __future__ import annotations

import io
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from agent.runtime.logs import setup_logging


@pytest.fixture
def stream(tmp_path: Path, root_logger: logging.Logger) -> Iterator[TextIO]:
    with (tmp_path / "stderr.log").open("w+", encoding="utf-8") as out:
        yield out


def journal_stream_of(out: TextIO) -> str:
    status = os.fstat(out.fileno())
    return f"{status.st_dev}:{status.st_ino}"


def written(out: TextIO) -> str:
    out.flush()
    out.seek(0)
    return out.read()


def test_plain_stderr_with_timestamps(stream: TextIO) -> None:
    assert setup_logging("info", environ={}, stream=stream) == "stderr"
    logging.getLogger("agent.test").info("hello %s", "world")
    logging.getLogger("agent.test").debug("not shown")
    text = written(stream)
    assert "INFO    agent.test: hello world" in text
    assert "not shown" not in text
    assert text[:4].isdigit()  # the year of the timestamp


def test_default_stream_is_whatever_sys_stderr_is_now(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An in-process main() under pytest's capture: the stderr seen at set-up is closed
    # later and another one takes its place; logging must follow, not hit a closed file.
    at_setup = io.StringIO()
    monkeypatch.setattr(sys, "stderr", at_setup)
    assert setup_logging("info", environ={}) == "stderr"
    at_setup.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    logging.getLogger("agent.test").warning("after the swap")
    text = now.getvalue()
    assert "WARNING agent.test: after the swap" in text
    assert "Logging error" not in text


def test_journal_stream_without_systemd_python_prefixes_priorities(
    stream: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # import systemd.journal fails
    env = {"JOURNAL_STREAM": journal_stream_of(stream)}
    assert setup_logging("DEBUG", environ=env, stream=stream) == "journald-stderr"
    log = logging.getLogger("agent.test")
    log.error("bad\nsecond line")
    log.warning("careful")
    log.info("fine")
    log.debug("detail")
    assert written(stream).splitlines() == [
        "<3>agent.test: bad\\nsecond line",  # one record, one line: nothing forged
        "<4>agent.test: careful",
        "<6>agent.test: fine",
        "<7>agent.test: detail",
    ]


def test_journal_stream_of_another_file_means_plain_stderr(stream: TextIO, tmp_path: Path) -> None:
    with (tmp_path / "other").open("w") as other:
        env = {"JOURNAL_STREAM": journal_stream_of(other)}
    assert setup_logging(environ=env, stream=stream) == "stderr"


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "a:b"])
def test_malformed_journal_stream_means_plain_stderr(stream: TextIO, value: str) -> None:
    assert setup_logging(environ={"JOURNAL_STREAM": value}, stream=stream) == "stderr"


def test_journald_handler_when_systemd_python_imports(
    stream: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    records: list[logging.LogRecord] = []

    class JournalHandler(logging.Handler):
        def __init__(self, **fields: str) -> None:
            super().__init__()
            self.fields = fields

        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    package = types.ModuleType("systemd")
    journal = types.ModuleType("systemd.journal")
    journal.JournalHandler = JournalHandler  # type: ignore[attr-defined]
    package.journal = journal  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.journal", journal)
    env = {"JOURNAL_STREAM": journal_stream_of(stream)}
    assert setup_logging(environ=env, stream=stream) == "journald"
    logging.getLogger("agent.test").warning("to the journal")
    assert [r.getMessage() for r in records] == ["to the journal"]
    assert written(stream) == ""


def test_setting_up_twice_keeps_one_handler(stream: TextIO) -> None:
    setup_logging(environ={}, stream=stream)
    setup_logging(environ={}, stream=stream)
    logging.getLogger("agent.test").warning("once")
    assert written(stream).count("once") == 1
