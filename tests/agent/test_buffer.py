"""agent.store.buffer: the durable SQLite telemetry buffer, on real files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.telemetry import Publisher, Sample, TelemetryMessage, build_message, decode_body
from agent.store.buffer import SqliteBuffer
from tests.support.fakeclock import FakeClock


def message(sequence: int, clock: FakeClock, size: int = 0) -> TelemetryMessage:
    readings = {"s": {"temperature_c": 20.0 + sequence}}
    errors = {"pad": "x" * size} if size else {}
    return build_message(
        sequence=sequence,
        timestamp_s=clock.time(),
        sample=Sample(readings, errors),
        message_id=f"m{sequence}",
    )


def open_buffer(path: Path, clock: FakeClock, **bounds: float) -> SqliteBuffer:
    limits = {"max_messages": 100, "max_bytes": 1 << 20, "max_age_s": 3600.0, **bounds}
    return SqliteBuffer(
        path,
        clock=clock,
        max_messages=int(limits["max_messages"]),
        max_bytes=int(limits["max_bytes"]),
        max_age_s=float(limits["max_age_s"]),
    )


def rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT sequence FROM messages ORDER BY sequence")]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_committed_messages_survive_a_reopen_with_body_timestamp_and_sequence(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "telemetry.db"
    buffer = open_buffer(path, clock)
    sent = [message(n, clock) for n in (1, 2, 3)]
    for m in sent:
        buffer.append(m)
    assert not path.exists()  # nothing written before the first commit, not even the file
    assert buffer.flush()
    assert rows(path) == [1, 2, 3]
    buffer.close()
    clock.advance(10)
    again = open_buffer(path, clock)
    assert len(again) == 3 and again.next_sequence == 4
    taken = again.take(10)
    assert [m.body for m in taken] == [m.body for m in sent]
    assert [m.properties for m in taken] == [m.properties for m in sent]
    assert [decode_body(m.body)["sequence"] for m in taken] == [1, 2, 3]
    assert [m.timestamp_s for m in taken] == [m.timestamp_s for m in sent]


def test_a_message_leaves_only_on_puback_and_acked_before_commit_is_never_written(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "telemetry.db"
    buffer = open_buffer(path, clock)
    publisher = Publisher(buffer, max_in_flight=2)
    for n in (1, 2, 3):
        buffer.append(message(n, clock))
    publisher.connect("dev")
    first = publisher.pump()
    assert [p.tag for p in first] == ["m1", "m2"]  # the in-flight window
    publisher.sent("m1", 11)
    publisher.sent("m2", 12)
    assert publisher.acked(11)
    assert buffer.flush()
    assert rows(path) == [2, 3]  # m1 acknowledged before any commit: never written
    publisher.disconnect()  # m2 back to pending, still in the buffer
    assert buffer.flush() and rows(path) == [2, 3]
    publisher.connect("dev")
    assert [p.tag for p in publisher.pump()] == ["m2", "m3"]
    publisher.sent("m2", 21)
    publisher.acked(21)
    assert buffer.flush() and rows(path) == [3]
    assert buffer.commits == 2  # the flush with nothing to do did not commit


def test_needs_flush_only_while_something_waits_for_a_commit(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The daemon runs its commit timer only while this says so: a connected device whose
    # messages are acknowledged before the next commit never wakes up to commit.
    buffer = open_buffer(tmp_path / "telemetry.db", clock, max_messages=2)
    publisher = Publisher(buffer, max_in_flight=5)
    publisher.connect("dev")
    assert not buffer.needs_flush
    buffer.append(message(1, clock))
    assert buffer.needs_flush
    (pub,) = publisher.pump()
    publisher.sent(pub.tag or "", 1)
    assert publisher.acked(1)
    assert not buffer.needs_flush  # acknowledged before any commit: nothing to write
    for n in (2, 3, 4):  # the bound drops m2, appended and never committed
        buffer.append(message(n, clock))
    assert buffer.needs_flush
    assert buffer.flush() and not buffer.needs_flush
    assert rows(tmp_path / "telemetry.db") == [3, 4]
    publisher.sent(publisher.pump()[0].tag or "", 2)
    assert publisher.acked(2)  # m3 was committed: its delete waits for a commit
    assert buffer.needs_flush
    assert buffer.flush() and not buffer.needs_flush
    buffer.append(message(5, clock))
    buffer.append(message(5, clock))  # the same message again counts once
    assert buffer.flush() and not buffer.needs_flush
    assert rows(tmp_path / "telemetry.db") == [4, 5]
    clock.advance(3601)  # past the age bound: dropping committed ones is a delete to commit
    assert buffer.take(5) == [] and buffer.needs_flush
    assert buffer.flush() and not buffer.needs_flush
    assert rows(tmp_path / "telemetry.db") == []


def test_the_sequence_numbering_continues_after_everything_was_acknowledged(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "telemetry.db"
    buffer = open_buffer(path, clock)
    for n in (1, 2):
        buffer.append(message(n, clock))
    buffer.flush()
    for m in buffer.take(5):
        buffer.ack(m.message_id)
    buffer.close()
    assert rows(path) == []
    assert open_buffer(path, clock).next_sequence == 3


def test_a_buffer_closed_empty_is_not_opened_at_the_next_start(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "telemetry.db"
    buffer = open_buffer(path, clock)
    for n in (1, 2):
        buffer.append(message(n, clock))
    assert buffer.flush() and buffer.database_open
    for m in buffer.take(5):
        buffer.ack(m.message_id)
    buffer.close()
    assert (tmp_path / "telemetry.db.empty").exists()
    again = open_buffer(path, clock)
    assert not again.database_open and len(again) == 0 and again.next_sequence == 3
    again.append(message(3, clock))  # not in flight: the next flush must write it
    assert again.flush() and again.database_open and rows(path) == [3]
    assert not (tmp_path / "telemetry.db.empty").exists()  # the file changes from here on


def test_a_marker_that_no_longer_matches_the_database_is_not_trusted(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "telemetry.db"
    buffer = open_buffer(path, clock)
    buffer.append(message(1, clock))
    buffer.flush()
    buffer.ack("m1")
    buffer.close()
    with sqlite3.connect(path) as db:  # written by something else since
        db.execute("INSERT INTO messages VALUES ('m9', 9, ?, '{}', x'7b7d')", (clock.time(),))
    again = open_buffer(path, clock)
    assert again.database_open and len(again) == 1 and again.next_sequence == 10
    again.close()
    (tmp_path / "telemetry.db.empty").write_text("not json")
    assert open_buffer(path, clock).database_open  # a marker that does not parse: opened


def test_messages_in_flight_do_not_open_the_database_until_they_are_old(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "telemetry.db"
    buffer = open_buffer(path, clock)
    publisher = Publisher(buffer, max_in_flight=5)
    publisher.connect("dev")
    buffer.append(message(1, clock))
    assert [p.tag for p in publisher.pump()] == ["m1"]
    assert not buffer.flush()  # m1 is in flight and young: left to its PUBACK
    assert not buffer.database_open and not path.exists()
    clock.advance(5.0)  # no PUBACK came in time: the next flush writes it
    assert buffer.flush() and rows(path) == [1]
    fresh = tmp_path / "fresh.db"
    other = open_buffer(fresh, clock)
    other.append(message(1, clock))
    other.take(5)
    other.close()  # at shutdown no PUBACK is coming: written whatever its age
    assert rows(fresh) == [1]


@pytest.mark.parametrize("reason", ["count", "bytes"])
def test_bounds_drop_the_oldest_and_count_why(
    tmp_path: Path, clock: FakeClock, reason: str
) -> None:
    size = len(message(1, clock, size=300).body)  # every message below has this size
    bounds = {"max_messages": 3} if reason == "count" else {"max_bytes": 3 * size + size // 2}
    buffer = open_buffer(tmp_path / "telemetry.db", clock, **bounds)
    for n in range(1, 7):
        buffer.append(message(n, clock, size=300))
        if n == 2:
            buffer.flush()  # committed ones are dropped (deleted) the same way
    assert buffer.dropped_by[reason] == 3 and buffer.dropped == 3
    assert [decode_body(m.body)["sequence"] for m in buffer.take(10)] == [4, 5, 6]
    buffer.flush()
    assert rows(tmp_path / "telemetry.db") == [4, 5, 6]


def test_messages_older_than_the_age_bound_are_dropped(tmp_path: Path, clock: FakeClock) -> None:
    buffer = open_buffer(tmp_path / "telemetry.db", clock, max_age_s=100.0)
    buffer.append(message(1, clock))
    buffer.flush()
    clock.advance(60)
    buffer.append(message(2, clock))
    clock.advance(60)  # 1 is 120 s old now, 2 is 60 s old
    assert [m.message_id for m in buffer.take(5)] == ["m2"]
    assert buffer.dropped_by["age"] == 1


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 5000],
)
def test_a_corrupt_file_is_set_aside_and_a_fresh_buffer_started(
    tmp_path: Path, clock: FakeClock, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "telemetry.db"
    path.write_bytes(content)
    buffer = open_buffer(path, clock)
    assert buffer.problem is not None and "set aside" in buffer.problem
    assert "telemetry buffer" in caplog.text
    copies = list(tmp_path.glob("telemetry.db.corrupt-*"))
    assert [c.read_bytes() for c in copies] == [content]
    buffer.append(message(1, clock))
    assert buffer.flush() and rows(path) == [1]


def test_a_fifo_in_its_place_is_set_aside_without_hanging(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "telemetry.db"
    os.mkfifo(path)
    buffer = open_buffer(path, clock)
    assert buffer.problem is not None and "not a regular file" in buffer.problem
    buffer.append(message(1, clock))
    assert buffer.flush() and rows(path) == [1]


def test_a_file_far_larger_than_the_bounds_is_set_aside(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "telemetry.db"
    with path.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    buffer = open_buffer(path, clock, max_bytes=4096)
    assert buffer.problem is not None and "more than the bounds allow" in buffer.problem
    assert list(tmp_path.glob("telemetry.db.corrupt-*"))


#: Writes committed messages, then dies by SIGKILL in the middle of the next batch.
_KILLED_WRITER = r"""
import os, signal, sys
from pathlib import Path
from agent.core.telemetry import Sample, build_message
from agent.store.buffer import SqliteBuffer
from tests.support.fakeclock import FakeClock
clock = FakeClock()
buffer = SqliteBuffer(Path(sys.argv[1]), clock=clock, max_messages=1000, max_bytes=1 << 20,
                      max_age_s=3600)
for n in range(1, 21):
    buffer.append(build_message(sequence=n, timestamp_s=clock.time(),
                                sample=Sample({"s": {"x_c": float(n)}}, {}), message_id=f"m{n}"))
    if n == 10:
        assert buffer.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_committed_messages_survive_sigkill_and_uncommitted_ones_do_not_appear(
    tmp_path: Path,
) -> None:
    path = tmp_path / "telemetry.db"
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -9, result.stderr
    assert rows(path) == list(range(1, 11))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='high_water'").fetchone() == (10,)


#: In a 1 MiB tmpfs: messages committed, the disk filled, more sampled; then room again.
_DISK_FULL = r"""
import json, sys
from pathlib import Path
from agent.core.telemetry import Sample, build_message
from agent.store.buffer import SqliteBuffer
from tests.support.fakeclock import FakeClock
from tests.support.tmpfs import fill
folder = Path(sys.argv[1])
clock = FakeClock()
buffer = SqliteBuffer(folder / "telemetry.db", clock=clock, max_messages=1000,
                      max_bytes=1 << 20, max_age_s=3600)
def sample(n):
    buffer.append(build_message(sequence=n, timestamp_s=clock.time(),
                                sample=Sample({"s": {"x_c": float(n)}}, {"pad": "p" * 2000}),
                                message_id=f"m{n}"))
for n in range(1, 6):
    sample(n)
report = {"first": buffer.flush()}
filler = fill(folder)
for n in range(6, 60):
    sample(n)
report["full"] = buffer.flush()
report["problem"] = buffer.problem
report["taken"] = [m.sequence for m in buffer.take(100)]
filler.unlink()
buffer.release_in_flight()
report["after"] = buffer.flush()
buffer.close()
reopened = SqliteBuffer(folder / "telemetry.db", clock=clock, max_messages=1000,
                        max_bytes=1 << 20, max_age_s=3600)
report["kept"] = [m.sequence for m in reopened.take(100)]
print(json.dumps(report))
"""


def test_a_full_disk_keeps_sampling_in_memory_and_commits_once_there_is_room(
    tmp_path: Path,
) -> None:
    import json

    from tests.support.tmpfs import small_tmpfs_argv

    folder = tmp_path / "small"
    folder.mkdir()
    result = subprocess.run(
        small_tmpfs_argv(folder, 1024, [sys.executable, "-c", _DISK_FULL, str(folder)]),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["first"] is True
    assert report["full"] is False
    assert "full" in report["problem"]
    assert report["taken"] == list(range(1, 60))  # nothing lost while the disk was full
    assert report["after"] is True
    assert report["kept"] == list(range(1, 60))
