"""The inbox folder's inotify events (watchdog) turned into "consider this name" calls."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler


class InboxEvents(FileSystemEventHandler):
    """Only names directly in the folder count; `settle` says whether the file may still grow
    (created / modified) or is complete (closed after writing, moved in)."""

    def __init__(self, folder: Path, consider: Callable[[str, bool], None]) -> None:
        self.folder = folder
        self.consider = consider

    def _name(self, path: str | bytes) -> str | None:
        p = Path(os.fsdecode(path))
        return p.name if p.parent == self.folder else None

    def on_closed(self, event: FileSystemEvent) -> None:
        if (name := self._name(event.src_path)) is not None:
            self.consider(name, False)

    def on_moved(self, event: FileSystemEvent) -> None:
        if (name := self._name(event.dest_path)) is not None:
            self.consider(name, False)

    def on_created(self, event: FileSystemEvent) -> None:
        # A same-filesystem `mv` into the folder produces only this event.
        if (name := self._name(event.src_path)) is not None:
            self.consider(name, True)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (name := self._name(event.src_path)) is not None:
            self.consider(name, True)


#: How long watchdog holds an IN_MOVED_FROM waiting for its IN_MOVED_TO. Both halves of a rename
#: inside the inbox come in one read of the inotify fd, so pairing needs microseconds; watchdog's
#: 0.5 s default matters because every claim (a rename out of the watched folder into
#: .processing/) leaves an unpaired IN_MOVED_FROM at the head of watchdog's queue, and every event
#: behind it waits too: +0.1-0.5 s on the next file's latency (bench: python -m bench.ab).
#: A recursive watch would pair the claim instead, but costs ~3 ms of CPU per file in events
#: from .processing/ and processed/ (inbox throughput 163 -> 108 files/s).
MOVE_PAIRING_S = 0.02


def shorten_move_pairing() -> None:
    """Set watchdog's move-pairing delay (a class attribute; its name changed in watchdog 5)."""
    for module, cls in (("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),
                        ("watchdog.observers.inotify_buffer", "InotifyBuffer")):
        try:
            klass = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue
        if getattr(klass, "delay", 0) > MOVE_PAIRING_S:
            klass.delay = MOVE_PAIRING_S
