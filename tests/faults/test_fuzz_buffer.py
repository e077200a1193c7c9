"""Hypothesis against the durable buffer's file: whatever is on disk, the buffer opens,
keeps sampling and sending, and sets a bad file aside -- it never raises.

Three kinds of damage to a real ``telemetry.db`` the buffer wrote: rows of any SQLite
type in every column (SQLite's columns are not typed), bytes flipped anywhere in the
file and its WAL, and the file cut short. Then one real agent process starts on a
garbage file and must send telemetry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.telemetry import Sample, TelemetryMessage, build_message
from agent.store.buffer import BUFFER_FILE, SqliteBuffer
from tests.support.agentcloud import Cloud, issue_device, write_config
from tests.support.fakeclock import FakeClock

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
sqlite_values = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=80)
    | st.sampled_from([b'{"sequence": 1, "timestamp": "x"}', "9" * 400, b"", ""])
)


def message(sequence: int, clock: FakeClock) -> TelemetryMessage:
    return build_message(
        sequence=sequence,
        timestamp_s=clock.time(),
        sample=Sample({"s": {"temperature_c": 20.0 + sequence}}, {}),
        message_id=f"m{sequence}-{int(clock.time() * 1000)}",
    )


def open_buffer(path: Path, clock: FakeClock) -> SqliteBuffer:
    return SqliteBuffer(path, clock=clock, max_messages=100, max_bytes=1 << 20, max_age_s=3600.0)


def written(directory: Path, clock: FakeClock, count: int = 5) -> Path:
    """A real buffer file holding ``count`` committed messages (WAL included)."""
    path = directory / BUFFER_FILE
    buffer = open_buffer(path, clock)
    for n in range(1, count + 1):
        buffer.append(message(n, clock))
    assert buffer.flush()
    if count == 0:  # a buffer that never had to write makes no file: one emptied again
        buffer.append(message(1, clock))
        assert buffer.flush()
        buffer.ack("m1")
        assert buffer.flush()
    buffer.close()
    return path


def still_works(path: Path, clock: FakeClock) -> None:
    """Open whatever is at ``path``; sample, send, acknowledge, commit: nothing raises."""
    buffer = open_buffer(path, clock)
    try:
        first = buffer.next_sequence
        assert isinstance(first, int) and first >= 1
        buffer.append(message(first, clock))
        buffer.flush()
        taken = buffer.take(200)
        assert all(isinstance(m.body, bytes) for m in taken)
        assert any(m.sequence == first for m in taken)  # what was just sampled goes out
        for m in taken:
            buffer.ack(m.message_id)
        buffer.flush()
        assert len(buffer) == 0
    finally:
        buffer.close()


@FUZZ
@given(
    rows=st.lists(st.tuples(*[sqlite_values] * 5), max_size=6),
    high_water=sqlite_values,
)
def test_rows_of_any_type_never_break_the_buffer(
    rows: list[tuple[object, ...]], high_water: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("rows")
    clock = FakeClock()
    path = written(directory, clock)
    with sqlite3.connect(path) as db:
        for row in rows:
            try:
                db.execute("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?)", row)
            except sqlite3.Error:
                continue  # a constraint said no (NULL key): nothing written
        with contextlib.suppress(sqlite3.Error):
            db.execute("INSERT OR REPLACE INTO meta VALUES ('high_water', ?)", (high_water,))
    still_works(path, clock)


@FUZZ
@given(data=st.data())
def test_bytes_flipped_anywhere_or_the_file_cut_short_never_break_the_buffer(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("bytes")
    clock = FakeClock()
    path = written(directory, clock, count=data.draw(st.integers(0, 20)))
    victims = [p for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    victim = data.draw(st.sampled_from(victims))
    raw = bytearray(victim.read_bytes())
    if data.draw(st.booleans()) and raw:
        victim.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            if not raw:
                break
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        victim.write_bytes(bytes(raw))
    still_works(path, clock)


def test_the_agent_starts_on_a_garbage_buffer_and_sends_telemetry(
    cloud: Cloud, tmp_path: Path, pycache: Path
) -> None:
    device = issue_device(cloud, "dev-garbagebuffer")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / BUFFER_FILE).write_bytes(b"SQLite format 3\x00" + os.urandom(5000))
    write_config(tmp_path / "agent.toml", cloud, device, state_dir=state_dir, buffer="sqlite")
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(tmp_path / "agent.toml"), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": "", "PYTHONPYCACHEPREFIX": str(pycache)},
        )
    try:
        cloud.client.wait_for_telemetry(device_id="dev-garbagebuffer", count=3, timeout_s=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert BUFFER_FILE in text and "Traceback" not in text, text[-2000:]
    assert any(p.name.startswith(f"{BUFFER_FILE}.corrupt-") for p in state_dir.iterdir())


# The cases the fuzzing found, kept as plain tests.


def test_a_row_of_the_wrong_types_is_dropped_and_the_others_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    path = written(tmp_path, clock, count=3)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO messages VALUES ('bad', '', 'not a time', 'x', 'y')")
        db.execute("UPDATE meta SET value = 'garbage' WHERE key = 'high_water'")
    buffer = open_buffer(path, clock)
    assert [m.sequence for m in buffer.take(10)] == [1, 2, 3]
    assert buffer.dropped_by["corrupt"] == 1
    assert buffer.next_sequence == 4  # the highest kept, not the unusable high_water
    buffer.close()


def test_one_row_that_is_not_utf_8_costs_that_row_only(tmp_path: Path) -> None:
    clock = FakeClock()
    path = written(tmp_path, clock, count=3)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE messages SET properties = CAST(X'80ff7b7d' AS TEXT) WHERE sequence = 2")
    buffer = open_buffer(path, clock)
    assert [m.sequence for m in buffer.take(10)] == [1, 3]
    assert buffer.dropped_by["corrupt"] == 1
    buffer.close()


def test_a_messages_table_with_other_columns_is_set_aside_at_open(tmp_path: Path) -> None:
    clock = FakeClock()
    path = written(tmp_path, clock, count=2)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE messages RENAME COLUMN properties TO propErties")
    buffer = open_buffer(path, clock)
    assert buffer.problem is not None and "columns" in buffer.problem
    assert any(p.name.startswith(f"{BUFFER_FILE}.corrupt-") for p in tmp_path.iterdir())
    buffer.append(message(buffer.next_sequence, clock))
    assert buffer.flush()
    assert len(buffer.take(10)) == 1
    buffer.close()
