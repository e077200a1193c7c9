"""The durable telemetry buffer: SQLite in WAL mode behind the core's queue interface.

Theory of operation
-------------------
:class:`SqliteBuffer` implements :class:`~agent.core.telemetry.TelemetryQueue`. A
message sampled is *appended* in memory; :meth:`SqliteBuffer.flush` (the daemon calls
it ``buffer_commit_interval_s`` after something became uncommitted, which
:attr:`SqliteBuffer.needs_flush` tells, and at shutdown) writes every message appended
since the last flush and deletes every message acknowledged since, in **one**
transaction. Once that commit returns, the message is *in the buffer*: it survives
SIGKILL and power loss (``journal_mode=WAL``, ``synchronous=FULL``: the WAL is
fsync-ed at each commit) and leaves it only when its PUBACK arrives (:meth:`ack`)
and the next flush deletes it. A message published and acknowledged before the next
flush is never written at all -- while the hub is reachable the buffer costs the SD
card almost nothing; writes happen while offline, one commit per interval.

Bounds, oldest dropped first and counted by reason (``dropped_by``): at most
``max_messages`` messages, ``max_bytes`` of bodies, and nothing older than
``max_age_s`` (by the sampling time). Messages keep their body (timestamp and
sequence number inside) unchanged; :attr:`next_sequence` continues after the highest
sequence ever committed (table ``meta``, key ``high_water``), so numbering goes on
across restarts, and a test can tell, after a kill, which sequences had been committed.

Opened only when needed: ``sqlite3`` (about 2.5 MiB of RSS with its library) is not
imported while there is nothing to read or write. A clean :meth:`close` that leaves
the database empty writes ``telemetry.db.empty`` next to it (the ``high_water`` and
the database file's inode, size, mtime and ctime); at the next start, a marker that still
matches the file, with no ``-wal`` beside it, stands for the database (nothing to
load, numbering continues after its ``high_water``), and so does a database that does
not exist yet. The database is then opened (and the marker removed first) by the
first flush that has something to write or delete. While it is not open, a periodic
flush whose only new messages are all in flight and younger than
:data:`IN_FLIGHT_GRACE_S` leaves them to their PUBACK (they are written by the next
flush if it has not come), so a connected agent never opens it; :meth:`close` writes
them whatever their age.

Only metadata (id, sequence, time, size) stays in memory for committed messages;
bodies are read back in :meth:`take`. The in-flight window is the publisher's
(``max_in_flight``); :meth:`release_in_flight` after a disconnect.

Failures never stop sampling: a database that cannot be opened or written (disk
full, read-only, I/O error) is logged, messages stay in memory (under the same
bounds) and the next flush tries again; a file that is not a database, is malformed,
is not a regular file or is far larger than the bounds allow is moved aside to
``telemetry.db.corrupt-<timestamp>`` with a clear error and a fresh one is started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.core.clock import Clock
from agent.core.telemetry import TelemetryMessage
from agent.errors import StateError
from agent.store.files import atomic_write, read_json_object, set_aside

if TYPE_CHECKING:
    import sqlite3  # imported when the database is first opened

log = logging.getLogger(__name__)

BUFFER_FILE = "telemetry.db"
#: SQLite page size of a new buffer (bytes): what one commit rewrites per touched page.
PAGE_SIZE = 1024
SCHEMA_VERSION = 1
#: A database file larger than this many times ``max_bytes`` (plus slack) is not ours.
OVERSIZE_FACTOR = 4
OVERSIZE_SLACK_BYTES = 4 * 1024 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    sampled_at REAL NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
#: The messages table's columns, in order, as :data:`_SCHEMA` makes them.
COLUMNS = ("message_id", "sequence", "sampled_at", "properties", "body")
DROP_REASONS = ("count", "bytes", "age", "corrupt")
#: Next to the database after a clean close that left it empty (see the theory above).
EMPTY_MARKER_SUFFIX = ".empty"
#: What the marker records of the database file (``os.stat_result`` fields, ``st_`` dropped).
_MARKED = ("ino", "size", "mtime_ns", "ctime_ns")
#: While the database is not open, messages in flight this young wait for their PUBACK.
IN_FLIGHT_GRACE_S = 1.0


@dataclass
class _Entry:
    sequence: int
    sampled_at: float
    size: int
    #: The message itself while it is not committed (None once it is in the database).
    message: TelemetryMessage | None


class SqliteBuffer:
    """A bounded, durable :class:`~agent.core.telemetry.TelemetryQueue`."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        max_messages: int,
        max_bytes: int,
        max_age_s: float,
    ) -> None:
        if max_messages < 1 or max_bytes < 1 or max_age_s <= 0:
            raise ValueError("buffer bounds must be positive")
        self.path = path
        self._clock = clock
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._in_flight: set[str] = set()
        self._to_delete: set[str] = set()
        #: Entries appended since the last commit (their message is still in memory).
        self._uncommitted = 0
        self._bytes = 0
        self._db: sqlite3.Connection | None = None
        self.dropped_by: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        #: The highest sequence number committed so far (0: none).
        self.high_water = 0
        #: Commits that wrote something (for the write budget).
        self.commits = 0
        #: Why the database is not in use right now (None when it is).
        self.problem: str | None = None
        self._read_failed = False
        self._marker = Path(f"{path}{EMPTY_MARKER_SUFFIX}")
        if not self._nothing_to_load():
            self._open()

    # -- the queue interface -----------------------------------------------------------------

    @property
    def database_open(self) -> bool:
        """Whether the database is open now (``sqlite3`` loaded): see the theory above."""
        return self._db is not None

    @property
    def dropped(self) -> int:
        """Messages dropped for any reason."""
        return sum(self.dropped_by.values())

    @property
    def next_sequence(self) -> int:
        """The sequence number the next sampled message should carry."""
        newest = max((e.sequence for e in self._entries.values()), default=0)
        return max(self.high_water, newest) + 1

    @property
    def needs_flush(self) -> bool:
        """Whether a :meth:`flush` has something to write: a message appended and not yet
        acknowledged, or an acknowledgement of a committed one (O(1))."""
        return self._uncommitted > 0 or bool(self._to_delete)

    def append(self, message: TelemetryMessage) -> None:
        """Add ``message`` (committed at the next :meth:`flush`); enforce the bounds."""
        size = len(message.body)
        previous = self._entries.get(message.message_id)
        if previous is not None and previous.message is not None:
            self._uncommitted -= 1  # replaced below, counted again
        self._entries[message.message_id] = _Entry(
            message.sequence, message.timestamp_s, size, message
        )
        self._uncommitted += 1
        self._bytes += size
        self._enforce_bounds()

    def take(self, limit: int) -> list[TelemetryMessage]:
        """Up to ``limit`` oldest messages not in flight, marked in flight."""
        self._drop_expired()
        chosen = [mid for mid in self._entries if mid not in self._in_flight][: max(0, limit)]
        stored = [mid for mid in chosen if self._entries[mid].message is None]
        self._read_failed = False
        bodies = self._read(stored) if stored else {}
        taken: list[TelemetryMessage] = []
        for mid in chosen:
            entry = self._entries.get(mid)
            if entry is None:
                continue  # dropped while reading (the database turned out corrupt)
            message = entry.message or bodies.get(mid)
            if message is None:
                if self._db is not None and not self._read_failed:
                    # Gone from the database under us: count it, do not wedge on it.
                    self._forget(mid, reason="corrupt")
                continue  # else unreadable now: stays, for a later take
            taken.append(message)
            self._in_flight.add(mid)
        return taken

    def ack(self, message_id: str) -> bool:
        """The message's PUBACK arrived: it leaves the buffer (deleted at the next flush)."""
        self._in_flight.discard(message_id)
        entry = self._entries.pop(message_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        if entry.message is None:
            self._to_delete.add(message_id)
        else:
            self._uncommitted -= 1
        return True

    def release_in_flight(self) -> int:
        """Everything in flight becomes pending again (after a disconnect)."""
        count = len(self._in_flight)
        self._in_flight.clear()
        return count

    def __len__(self) -> int:
        return len(self._entries)

    # -- durability ----------------------------------------------------------------------------

    def flush(self) -> bool:
        """Commit what was appended and acknowledged since the last flush, in one transaction.

        Returns True if the buffer is durable now (nothing left uncommitted). Never raises.
        """
        return self._flush(final=False)

    def _flush(self, *, final: bool) -> bool:
        fresh = [(mid, e) for mid, e in self._entries.items() if e.message is not None]
        if not fresh and not self._to_delete:
            return True
        if self._db is None and not final and self._awaiting_puback(fresh):
            return False
        if self._db is None and not self._open():
            return False
        import sqlite3

        db = self._db
        assert db is not None
        high_water = max([self.high_water, *(e.sequence for _, e in fresh)])
        try:
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            mid,
                            e.sequence,
                            e.sampled_at,
                            _properties_to_text(e.message.properties),
                            e.message.body,
                        )
                        for mid, e in fresh
                        if e.message is not None
                    ],
                )
                if self._to_delete:
                    db.executemany(
                        "DELETE FROM messages WHERE message_id = ?",
                        [(mid,) for mid in self._to_delete],
                    )
                db.execute("INSERT OR REPLACE INTO meta VALUES ('high_water', ?)", (high_water,))
        except sqlite3.DatabaseError as exc:
            self._failed(exc)
            return False
        for _, entry in fresh:
            entry.message = None
        self._uncommitted = 0
        self._to_delete.clear()
        self.high_water = high_water
        self.commits += 1
        self.problem = None
        return True

    def close(self) -> None:
        """Flush and close the database (marked empty if it is: see the theory above)."""
        self._flush(final=True)
        if self._db is None:
            return
        import sqlite3

        try:
            self._db.close()
        except sqlite3.Error:
            self._db = None
            return
        self._db = None
        if not self._entries and not self._to_delete and self.problem is None:
            self._write_marker()

    # -- opening only when needed ----------------------------------------------------------------

    def _nothing_to_load(self) -> bool:
        """No database yet, or one an up-to-date marker says is empty (``high_water`` set)."""
        if os.path.lexists(f"{self.path}-wal"):
            return False
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # _open says what is wrong
        try:
            doc = read_json_object(self._marker)
        except StateError:
            return False
        if doc is None or not stat.S_ISREG(st.st_mode):
            return False
        high_water = doc.get("high_water")
        if [doc.get(k) for k in _MARKED] != [getattr(st, f"st_{k}") for k in _MARKED] or (
            not _is_sequence(high_water)
        ):
            return False
        assert isinstance(high_water, int)
        self.high_water = high_water
        return True

    def _write_marker(self) -> None:
        """After a clean close with nothing left: say so, for the next start."""
        try:
            st = os.lstat(self.path)
            if os.path.lexists(f"{self.path}-wal"):
                return
            doc: dict[str, int] = {"high_water": self.high_water}
            doc.update({k: getattr(st, f"st_{k}") for k in _MARKED})
            atomic_write(self._marker, json.dumps(doc).encode("utf-8"))
        except OSError as exc:
            log.warning("telemetry buffer: cannot write %s: %s", self._marker, exc)

    def _awaiting_puback(self, fresh: list[tuple[str, _Entry]]) -> bool:
        """Whether every new message is in flight and young (worth not opening for)."""
        if self._to_delete:
            return False
        young = self._clock.time() - IN_FLIGHT_GRACE_S
        return all(mid in self._in_flight and e.sampled_at >= young for mid, e in fresh)

    # -- internals -------------------------------------------------------------------------------

    def _connect(self) -> tuple[sqlite3.Connection, str]:
        """A connection in WAL mode with the schema in place; and the journal mode got."""
        import sqlite3

        db = sqlite3.connect(
            self.path, timeout=0.5, isolation_level="DEFERRED", check_same_thread=False
        )
        # A flipped byte in one row's text must cost that row, not the whole batch read.
        db.text_factory = _lenient_text
        try:
            # Small pages: a commit of one message rewrites a few 1 KiB pages, not 4 KiB ones
            # (takes effect only when the file is created).
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            raise
        return db, str(mode[0] if mode else "").lower()

    def _open(self) -> bool:
        """Open (or create) the database and load what it holds. False if unusable now."""
        import sqlite3

        # From here on the file may change: a marker saying it is empty no longer holds.
        try:
            self._marker.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return self._unusable(f"cannot remove {self._marker}: {exc}")
        try:
            self._check_file()
            db, mode = self._connect()
            schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if schema is None or schema[0] != SCHEMA_VERSION:
                db.close()
                raise sqlite3.DatabaseError(f"schema {schema!r}, expected {SCHEMA_VERSION}")
            columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
            if columns != list(COLUMNS):
                db.close()
                raise sqlite3.DatabaseError(f"messages has columns {columns}, expected {COLUMNS}")
            if db.execute("PRAGMA quick_check").fetchone() != ("ok",):
                db.close()
                raise sqlite3.DatabaseError("quick_check failed")
            rows = db.execute(
                "SELECT message_id, sequence, sampled_at, length(body) FROM messages"
                " ORDER BY sequence"
            ).fetchall()
            high = db.execute("SELECT value FROM meta WHERE key = 'high_water'").fetchone()
        except OSError as exc:
            return self._unusable(f"cannot open {self.path}: {exc}")
        except sqlite3.DatabaseError as exc:
            if _is_disk_trouble(exc):
                return self._unusable(f"cannot open {self.path}: {exc}")
            self._set_aside(f"{exc}")
            return self._open_fresh()
        except sqlite3.Error as exc:
            return self._unusable(f"cannot open {self.path}: {exc}")
        except ValueError as exc:  # text that is not UTF-8 in the schema or a pragma
            self._set_aside(f"unreadable content ({type(exc).__name__}: {exc})")
            return self._open_fresh()
        if mode != "wal":
            log.warning("%s: WAL journal not available (journal mode %r)", self.path, mode)
        self._db = db
        self._adopt(rows, high[0] if high else 0)
        return True

    def _open_fresh(self) -> bool:
        import sqlite3

        try:
            self._db, _ = self._connect()
        except (OSError, sqlite3.Error) as exc:
            return self._unusable(f"cannot create {self.path}: {exc}")
        return True

    def _check_file(self) -> None:
        """Refuse a path that is not a regular file, or one far too large to be ours."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        limit = OVERSIZE_FACTOR * self.max_bytes + OVERSIZE_SLACK_BYTES
        if not stat.S_ISREG(st.st_mode):
            self._set_aside("not a regular file")
        elif st.st_size > limit:
            self._set_aside(f"{st.st_size} bytes, more than the bounds allow ({limit})")

    def _adopt(self, rows: list[tuple[object, object, object, object]], high_water: object) -> None:
        """Put what the database holds before anything appended since (it is older).

        SQLite columns take any type: a row whose values are not what :meth:`flush`
        writes is dropped (counted as ``corrupt``, deleted at the next flush), and a
        ``high_water`` that is no sequence number is replaced by the highest kept one.
        """
        newer = self._entries
        self._entries = OrderedDict()
        for mid, sequence, sampled_at, size in rows:
            if mid in newer or mid in self._to_delete:
                continue
            if not (
                isinstance(mid, str)
                and _is_sequence(sequence)
                and isinstance(sampled_at, int | float)
                and math.isfinite(sampled_at)
                and isinstance(size, int)
                and size >= 0
            ):
                log.warning("telemetry buffer %s: dropping a malformed row", self.path)
                self._to_delete.add(mid)  # type: ignore[arg-type]
                self.dropped_by["corrupt"] += 1
                continue
            assert isinstance(sequence, int)
            self._entries[mid] = _Entry(sequence, float(sampled_at), size, None)
            self._bytes += size
        self._entries.update(newer)
        if not _is_sequence(high_water):
            log.warning("telemetry buffer %s: high_water %.40r unusable", self.path, high_water)
            high_water = max((e.sequence for e in self._entries.values()), default=0)
        assert isinstance(high_water, int)
        self.high_water = max(self.high_water, high_water)
        if rows:
            log.info("telemetry buffer %s: %d message(s) kept from before", self.path, len(rows))
        self._enforce_bounds()

    def _read(self, message_ids: list[str]) -> dict[str, TelemetryMessage]:
        import sqlite3

        if self._db is None:
            return {}
        marks = ",".join("?" * len(message_ids))
        try:
            rows = self._db.execute(
                f"SELECT message_id, sequence, sampled_at, properties, body FROM messages"  # noqa: S608 - only placeholders
                f" WHERE message_id IN ({marks})",
                message_ids,
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            self._read_failed = True
            self._failed(exc)
            return {}
        found: dict[str, TelemetryMessage] = {}
        for mid, sequence, sampled_at, properties, body in rows:
            try:
                found[mid] = TelemetryMessage(
                    str(mid),
                    int(sequence),
                    bytes(body),
                    _properties_from_text(properties),
                    timestamp_s=float(sampled_at),
                )
            except (TypeError, ValueError):
                continue  # a row we cannot use is counted as lost by take()
        return found

    def _enforce_bounds(self) -> None:
        self._drop_expired()
        while len(self._entries) > self.max_messages:
            self._forget(next(iter(self._entries)), reason="count")
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._forget(next(iter(self._entries)), reason="bytes")

    def _drop_expired(self) -> None:
        oldest_allowed = self._clock.time() - self.max_age_s
        while self._entries:
            mid, entry = next(iter(self._entries.items()))
            if entry.sampled_at >= oldest_allowed:
                return
            self._forget(mid, reason="age")

    def _forget(self, message_id: str, *, reason: str) -> None:
        entry = self._entries.pop(message_id)
        self._in_flight.discard(message_id)
        self._bytes -= entry.size
        if entry.message is None:
            self._to_delete.add(message_id)
        else:
            self._uncommitted -= 1
        self.dropped_by[reason] += 1

    def _failed(self, exc: sqlite3.DatabaseError) -> None:
        """A statement failed: disk trouble is retried later, corruption starts afresh."""
        import sqlite3

        if _is_disk_trouble(exc):
            # The connection stays: what is committed can still be read and sent.
            why = f"{self.path}: {exc}; keeping new messages in memory and retrying"
            if why != self.problem:
                log.error("telemetry buffer: %s", why)
            self.problem = why
            return
        log.error("telemetry buffer %s is corrupt (%s)", self.path, exc)
        lost = [mid for mid, e in self._entries.items() if e.message is None]
        for mid in lost:
            self._forget(mid, reason="corrupt")
        self._to_delete.clear()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        self._set_aside(str(exc))
        self._open_fresh()

    def _set_aside(self, why: str) -> None:
        copy = set_aside(self.path, self._clock.time())
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{self.path}{suffix}").unlink()
        self.problem = f"{self.path}: {why}; set aside as {copy}, a fresh buffer started"
        log.error("telemetry buffer %s", self.problem)

    def _unusable(self, why: str) -> bool:
        import sqlite3

        if why != self.problem:
            log.error("telemetry buffer unusable: %s", why)
        self.problem = why
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        return False


def _lenient_text(raw: bytes) -> str:
    """TEXT as stored, with bytes that are not UTF-8 replaced (the row then fails to parse)."""
    return raw.decode("utf-8", "replace")


#: Sequence numbers stay well inside SQLite's signed 64-bit INTEGER.
MAX_SEQUENCE = 2**62


def _is_sequence(value: object) -> bool:
    """A sequence number as :meth:`SqliteBuffer.flush` writes one (int, 0..2**62)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_SEQUENCE


def _is_disk_trouble(exc: sqlite3.DatabaseError) -> bool:
    """Full, read-only or failing storage (retry later), as opposed to a corrupt file."""
    import sqlite3

    code = getattr(exc, "sqlite_errorcode", None)
    trouble = {
        getattr(sqlite3, name, -1)
        for name in (
            "SQLITE_FULL",
            "SQLITE_IOERR",
            "SQLITE_READONLY",
            "SQLITE_CANTOPEN",
            "SQLITE_BUSY",
            "SQLITE_LOCKED",
            "SQLITE_PERM",
        )
    }
    if code is not None and (code & 0xFF) in {t & 0xFF for t in trouble}:
        return True
    text = str(exc).lower()
    return any(w in text for w in ("disk is full", "disk i/o", "readonly", "unable to open"))


def _properties_to_text(properties: Mapping[str, str]) -> str:
    return json.dumps(dict(properties))


def _properties_from_text(text: object) -> dict[str, str]:
    value = json.loads(str(text))
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("properties must be an object of strings")
    return value
