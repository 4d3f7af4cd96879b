"""Durable store-and-forward of events: SQLite in WAL mode in `state_dir`.

An event is written here before it is published and deleted only when the broker acknowledges
it, so a broker outage or an agent crash loses nothing. The store is bounded: when full, the
oldest events are dropped and counted, because a device that is offline for a week must not
fill its SD card.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)


class OutboxError(Exception):
    """The outbox could not store an event (disk full, I/O error)."""


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path, *, max_messages: int, max_bytes: int,
                 on_overflow: Callable[[int], None] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode never corrupts the database; a power cut may lose the last commit.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL)")
        self._lock = threading.Lock()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_overflow = on_overflow
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events").fetchone()
        self._count, self._bytes = int(count), int(size)
        self.dropped = 0
        self.stored = 0

    def put(self, topic: str, payload: bytes) -> int:
        with self._lock:
            try:
                cur = self._db.execute("INSERT INTO events (topic, payload) VALUES (?, ?)", (topic, payload))
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot store event: {exc}") from exc
            self._count += 1
            self._bytes += len(payload)
            self.stored += 1
            dropped = self._trim()
        if dropped and self._on_overflow:
            self._on_overflow(dropped)
        return int(cur.lastrowid)

    def _trim(self) -> int:
        """Drop the oldest events beyond the bounds; returns how many were dropped."""
        dropped = 0
        while self._count > self.max_messages or self._bytes > self.max_bytes:
            excess = max(self._count - self.max_messages, 1)
            rows = self._db.execute("SELECT id, LENGTH(payload) FROM events ORDER BY id LIMIT ?",
                                    (excess,)).fetchall()
            if not rows:
                break
            self._db.execute("DELETE FROM events WHERE id <= ?", (rows[-1][0],))
            self._count -= len(rows)
            self._bytes -= sum(r[1] for r in rows)
            dropped += len(rows)
        self.dropped += dropped
        return dropped

    def pending(self, after_id: int, limit: int) -> list[Pending]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        return [Pending(int(r[0]), r[1], bytes(r[2])) for r in rows]

    def ack(self, ids: Iterable[int]) -> bool:
        """Delete acknowledged events in one transaction (batched: one commit per round).

        False when the delete failed (e.g. the disk is full: even a DELETE needs journal space);
        nothing changed then, and the caller may try again later.
        """
        ids = list(ids)
        if not ids:
            return True
        with self._lock:
            size = deleted = 0
            try:
                self._db.execute("BEGIN")
                for i in ids:
                    row = self._db.execute("SELECT LENGTH(payload) FROM events WHERE id = ?", (i,)).fetchone()
                    if row is None:
                        continue
                    self._db.execute("DELETE FROM events WHERE id = ?", (i,))
                    deleted += 1
                    size += row[0]
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # SQLITE_FULL on COMMIT rolls back by itself; a second ROLLBACK would raise.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                log.warning("outbox: could not delete acknowledged events: %s", exc)
                return False
            self._count -= deleted   # only once committed, so the counters never drift
            self._bytes -= size
            return True

    @property
    def count(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
