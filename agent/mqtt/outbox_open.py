"""Opening the outbox at start, and what happens when its file is corrupt.

Why: a bad page is a common SD-card fault. Before, a corrupt `outbox.sqlite3` made the agent exit 1
at every start, and systemd restarted it every 5 s forever with no alert: no device, and nobody
told. Now the corrupt file (with its WAL and shared-memory files) is moved aside under a UTC
timestamp, where an operator can still try to recover it, a fresh outbox starts, and the caller
raises an alert saying so and how many events the old file held (None when even that cannot be
read). Only corruption is handled so: a state folder that cannot be written, or an I/O error,
is not fixed by a fresh file and stays an error (`storage`, exit 69, EX_UNAVAILABLE).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.mqtt.outbox import Outbox, OutboxCorrupt

log = logging.getLogger(__name__)

_CORRUPT_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


@dataclass(frozen=True)
class Quarantined:
    """A corrupt outbox that was moved aside."""

    name: str  # the file's new name, in the same folder
    lost: int | None  # events it held; None when they could not be counted
    error: str

    def alert(self) -> dict[str, Any]:
        """The `outbox` alert's fields (docs/mqtt-api.md)."""
        lost = "an unknown number of" if self.lost is None else str(self.lost)
        return {"reason": "corrupt", "quarantined": self.name, "lost": self.lost,
                "message": f"the outbox was corrupt ({self.error}); it was moved aside as {self.name} and a "
                           f"fresh one started: {lost} queued events were lost"}


def open_outbox(path: Path, **kwargs: Any) -> tuple[Outbox, Quarantined | None]:
    """The outbox at `path`; a corrupt one is quarantined and replaced (see the module docstring)."""
    try:
        return Outbox(path, **kwargs), None
    except (OutboxCorrupt, sqlite3.DatabaseError) as exc:
        if not _is_corruption(exc):
            raise AgentError(f"cannot open the outbox {path}: {exc}", code="storage") from exc
        error = str(exc)
    name = _quarantine(path)
    lost = _count_events(path.with_name(name))
    log.error("outbox %s was corrupt (%s): moved aside as %s (%s events lost); starting a fresh one",
              path, error, name, "unknown" if lost is None else lost)
    try:
        outbox = Outbox(path, **kwargs)
    except (OutboxCorrupt, sqlite3.Error) as exc:
        raise AgentError(f"cannot start a fresh outbox {path}: {exc}", code="storage") from exc
    return outbox, Quarantined(name, lost, error)


def _is_corruption(exc: Exception) -> bool:
    if isinstance(exc, OutboxCorrupt):
        return True
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    return name in _CORRUPT_CODES if name is not None else type(exc) is sqlite3.DatabaseError


def _quarantine(path: Path) -> str:
    """Rename the database and its WAL/shm files to `<name>.corrupt-<UTC time>`; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"{path.name}.corrupt-{stamp}"
    n = 1
    while path.with_name(name).exists():
        n += 1
        name = f"{path.name}.corrupt-{stamp}-{n}"
    for suffix in ("-wal", "-shm", ""):  # the database last: a crash in between leaves it in place
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, path.with_name(name + suffix))
    return name


def _count_events(path: Path) -> int | None:
    """Rows of the events table in the quarantined file, read only; None when they cannot be read."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return None
    finally:
        db.close()
