"""Durable store-and-forward of events: SQLite in WAL mode in `state_dir`.

An event is written here before it is published and deleted only when the broker acknowledges
it, so a broker outage or an agent crash loses nothing. The store is bounded: when full, the
oldest events are dropped and counted, because a device that is offline for a week must not
fill its SD card.

Each `put` is its own commit, in one of two strengths. A durable put (the default) commits with
synchronous=FULL: SQLite fsyncs the WAL before `put` returns, so the event survives a power cut,
not only a kill -9, and so does every event stored before it (a WAL commit makes all earlier ones
durable too: they are frames earlier in the same file). A lazy put (`durable=False`) commits with
synchronous=NORMAL: a write into the WAL only, which survives a crash; a power cut may roll it
back until the next durable put (or a checkpoint, which syncs) has happened. Lazy puts are for
events that a durable one always follows before anything depends on them: a job's progress
(`queued`, `running`, `transcript`, `summary`) rides on its `done` / `failed`, which is stored
durably before its inbox file is finished (see agent.mqtt.events). That is one fsync per job
instead of one per event: the group commit that docs/reliability.md describes. Deletes of
acknowledged rows are lazy too: losing one to a power cut only sends that event again
(at-least-once, as after any crash). Acknowledged rows go in one DELETE per round, and a round with
nothing new to send does not query at all. Costs, measured: docs/reliability.md
(bench/outbox_durability.py).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

#: Ids per DELETE statement (SQLite before 3.32 allows 999 parameters per statement).
DELETE_CHUNK = 500
#: SQLite `synchronous` for a durable put (fsynced on return), and for lazy puts and deletes.
PUT_SYNC, LAZY_SYNC = "FULL", "NORMAL"


class OutboxError(Exception):
    """The outbox could not store an event (disk full, I/O error)."""


class OutboxCorrupt(Exception):
    """SQLite's integrity check found the outbox file damaged (agent.mqtt.outbox_open moves it aside)."""


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
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._check()
        except BaseException:
            self._db.close()
            raise
        # FULL for durable puts, NORMAL otherwise (see above); switched per commit by _synchronous
        self._sync_mode = ""
        self._synchronous(PUT_SYNC)
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL)")
        self._lock = threading.Lock()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._count, self._bytes = self._measure()
        self._last_id = int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
        # Payload size of each row handed out by pending() and not deleted yet (at most the rows
        # in flight), so that ack() is one DELETE instead of a size query per row.
        self._sizes: dict[int, int] = {}
        self.dropped = 0
        self.stored = 0

    def _check(self) -> None:
        """A damaged page (a common SD-card fault) found now, at start, rather than by some later put.

        `quick_check` reads every page once. The outbox is bounded (outbox.max_bytes, 50 MB by
        default) and nearly empty while the broker is reachable, so that is a few pages at a normal
        start and at most one read of the bound after a long outage.
        """
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise OutboxCorrupt("; ".join(str(p) for p in problems[:3]))

    def _measure(self) -> tuple[int, int]:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events").fetchone()
        return int(count), int(size)

    def _synchronous(self, mode: str) -> None:
        """The `synchronous` setting for the next commit (a PRAGMA only when it changes)."""
        if mode != self._sync_mode:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def put(self, topic: str, payload: bytes, *, durable: bool = True) -> int:
        """Store an event; `durable`: fsynced before this returns, with every event stored before it
        (else a WAL write only, made durable by the next durable put; see the module docstring)."""
        with self._lock:
            try:
                self._synchronous(PUT_SYNC if durable else LAZY_SYNC)
                cur = self._db.execute("INSERT INTO events (topic, payload) VALUES (?, ?)", (topic, payload))
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot store event: {exc}") from exc
            self._count += 1
            self._bytes += len(payload)
            self.stored += 1
            self._last_id = row_id = int(cur.lastrowid)
            dropped = self._trim()
        if dropped and self._on_overflow:
            self._on_overflow(dropped)
        return row_id

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
            for r in rows:
                self._sizes.pop(r[0], None)
        self.dropped += dropped
        return dropped

    def pending(self, after_id: int, limit: int) -> list[Pending]:
        """Stored rows after `after_id`, oldest first. Without a query when none was stored since:
        the publisher asks after every acknowledgement too."""
        with self._lock:
            if after_id >= self._last_id:
                return []
            rows = self._db.execute("SELECT id, topic, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
            out = [Pending(int(r[0]), r[1], bytes(r[2])) for r in rows]
            for p in out:
                self._sizes[p.id] = len(p.payload)
        return out

    def ack(self, ids: Iterable[int]) -> bool:
        """Delete acknowledged events in one transaction (batched: one commit per round).

        False when the delete failed (e.g. the disk is full: even a DELETE needs journal space);
        nothing changed then, and the caller may try again later.
        """
        ids = list(ids)
        if not ids:
            return True
        with self._lock:
            try:
                self._synchronous(LAZY_SYNC)
                deleted = self._delete(ids)
            except sqlite3.Error as exc:
                # SQLITE_FULL on COMMIT rolls back by itself; a second ROLLBACK would raise.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                log.warning("outbox: could not delete acknowledged events: %s", exc)
                return False
            # Only once committed, so the counters never drift.
            sizes = [self._sizes.pop(i, None) for i in ids]
            if deleted == len(ids) and None not in sizes:
                self._count -= deleted
                self._bytes -= sum(s for s in sizes if s is not None)
            else:   # some were dropped by _trim meanwhile (already counted), or sizes unknown
                self._count, self._bytes = self._measure()
            return True

    def _delete(self, ids: list[int]) -> int:
        """DELETE the rows; one statement (its own transaction) for a round of acknowledgements."""
        chunks = [ids[i:i + DELETE_CHUNK] for i in range(0, len(ids), DELETE_CHUNK)]
        if len(chunks) > 1:
            self._db.execute("BEGIN")
        deleted = 0
        for chunk in chunks:
            cur = self._db.execute(f"DELETE FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            deleted += cur.rowcount
        if len(chunks) > 1:
            self._db.execute("COMMIT")
        return deleted

    @property
    def count(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
