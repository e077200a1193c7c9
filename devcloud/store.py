"""Where devcloud keeps its records: in memory, or in one SQLite file.

A store is a dumb map of ``(kind, key) -> JSON record``. The :class:`~devcloud.registry.Registry`
keeps every record in memory and writes each change through to its store, and on start it
loads everything back, so a devcloud restarted on the same SQLite file keeps its
enrollments, devices, twins and registrations. SQLite runs in autocommit-per-statement
mode with WAL, so a crash loses at most the write in flight.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Store(Protocol):
    """Persistence behind the registry."""

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of ``kind``, by key."""
        ...

    def put(self, kind: str, key: str, record: Mapping[str, Any]) -> None:
        """Insert or replace one record."""
        ...

    def delete(self, kind: str, key: str) -> None:
        """Remove one record (no error if absent)."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


class MemoryStore:
    """A store that forgets everything when the process ends."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, dict[str, Any]]] = {}

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of ``kind``, by key (copies)."""
        return {k: json.loads(json.dumps(v)) for k, v in self._data.get(kind, {}).items()}

    def put(self, kind: str, key: str, record: Mapping[str, Any]) -> None:
        """Insert or replace one record (a JSON round trip, as SQLite would store it)."""
        self._data.setdefault(kind, {})[key] = json.loads(json.dumps(dict(record)))

    def delete(self, kind: str, key: str) -> None:
        """Remove one record (no error if absent)."""
        self._data.get(kind, {}).pop(key, None)

    def close(self) -> None:
        """Nothing to release."""


class SQLiteStore:
    """A store in one SQLite file: one table of JSON records."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records ("
            " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " PRIMARY KEY (kind, key))"
        )

    def load(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of ``kind``, by key."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM records WHERE kind = ?", (kind,))
            return {key: json.loads(value) for key, value in rows.fetchall()}

    def put(self, kind: str, key: str, record: Mapping[str, Any]) -> None:
        """Insert or replace one record (committed at once)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)",
                (kind, key, json.dumps(dict(record), sort_keys=True)),
            )

    def delete(self, kind: str, key: str) -> None:
        """Remove one record (no error if absent)."""
        with self._lock:
            self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
