"""The inbox folder as a durable queue: watch, claim, finish, recover.

A file is taken only when complete: after close-after-write, after a move into the folder, or
once its size and mtime have been stable for `settle_ms` (writers that never signal). It is
claimed by an atomic rename into `.processing/` (two workers can never take the same file), and
finished with one fsync (see `Inbox.finish`): a crash at any point of a finish either leaves the
file claimed, so the job runs again under the same job id, or is completed on restart; the file
is never lost and never in two places. Processing is at-least-once with one record: a crash
before the finish runs the job again (its events may be published twice, with the same job id,
so consumers can drop the repeat), but the file ends up with exactly one record. The finish
comes after the job's events are stored durably in the outbox (its `done` / `failed` is fsynced,
and with it every event before it: agent.mqtt.events), so a power cut can never leave a file in
processed/ whose events were lost. Nothing is ever deleted, except where the owner asks for it
with `keep_processed=False` (the microphone spool: successfully processed segments are removed
by one unlink, failed ones stay in `failed/` with their reason).

Anyone who can write the inbox folder is an attacker too (it is group-writable so people can drop
files). So the agent's own folders (`.processing/`, `processed/`, `failed/`) are opened once at
start without following a symlink and must be real directories the agent owns, or the inbox does
not start (`FolderRefused`: an alert, nothing moved). From then on every claim, finish and record
goes through those directory descriptors (`dir_fd`): a folder swapped for a symlink later changes
nothing. No path is ever read from a file (an earlier version's `*.finish.json` named its own
destination; such intents are dropped and their file runs again).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from watchdog.observers import Observer

from agent.errors import RequestError
from agent.settings import InboxSettings
from agent.sources.inbox_folders import DIR_FLAGS, is_file, mtime, only_owners_rename, open_own, recover
from agent.sources.inbox_names import (PENDING_SUFFIX, RECORD_SUFFIX, fit_name, job_id_name, pending_name,
                                       read_job_id, unique_name)
from agent.sources.inbox_watch import InboxEvents, shorten_move_pairing

log = logging.getLogger(__name__)

PROCESSING = ".processing"
#: Held while a finish picks its free name and reserves it with its pending record, so two jobs
#: finishing files of the same name (jobs.max_concurrent > 1) never pick the same one.
_NAMES = threading.Lock()
# After a close or a move the file is complete; the grace only lets events that inotify delivers
# in the same burst (modify + close of one write) coalesce. It is on every file's latency path:
# 0.1 s here was 90 % of the agent's own overhead per file (bench: python -m bench --only pipeline).
CLOSE_GRACE_S = 0.005


def is_candidate_name(name: str) -> bool:
    """Hidden files and files still being written by well-behaved tools are not taken."""
    return not (name.startswith(".") or name.endswith((".part", ".tmp", "~")))


@dataclass(frozen=True)
class Claimed:
    path: Path          # inside .processing/
    original: str       # the name it had in the inbox
    job_id: str | None = None   # a crash's leftover: the job id it ran under (see keep_job_id)


class Inbox:
    def __init__(self, settings: InboxSettings, on_ready: Callable[[], None], *,
                 announce: Callable[[str], None] = lambda name: None, keep_processed: bool = True) -> None:
        """`announce(name)` runs for a complete file before it can be taken (outside every lock: it
        stores the `queued` event); `on_ready()` once it can be taken."""
        self.settings = settings
        self.keep_processed = keep_processed
        self.path = Path(settings.path)
        self.processed = Path(settings.processed_dir or self.path / "processed")
        self.failed = Path(settings.failed_dir or self.path / "failed")
        self.processing = self.path / PROCESSING
        self._on_ready = on_ready
        self._announce = announce
        self._fd: dict[str, int] = {}   # "inbox", "processing", "processed", "failed" -> open directory
        #: Whether an engine may open a claimed file by its path (see inbox_folders.only_owners_rename).
        self.shares_paths = False
        self._cond = threading.Condition()
        self._due: list[tuple[float, str]] = []          # heap of (due time, name) to re-check
        self._seen: dict[str, tuple[int, int, float]] = {}   # name -> (size, mtime_ns, due) of the latest event
        self._ready: list[str] = []                      # complete files, in order
        self._announcing: set[str] = set()               # complete, being announced (not yet takeable)
        self._stop = False
        self._observer: Any = None
        self._thread = threading.Thread(target=self._settle_loop, name="inbox-settle", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> list[Claimed]:
        """Open (and create) the folders, complete interrupted finishes, and return claims left by
        a crash. FolderRefused, before anything is moved, if a folder of ours is not ours."""
        self._open_folders()
        proc = self._fd["processing"]
        recover(proc, {self._fd[k] for k in ("processed", "failed") if k in self._fd})
        # Hidden names are our own bookkeeping (a temp file a crash left), never a claimed audio file.
        leftovers = [Claimed(self.processing / n, n, read_job_id(proc, n))
                     for n in sorted(os.listdir(proc), key=lambda n: mtime(proc, n))
                     if is_candidate_name(n) and is_file(proc, n)]
        shorten_move_pairing()
        self._observer = Observer()
        self._observer.schedule(InboxEvents(self.path, self._consider), str(self.path), recursive=False)
        self._observer.start()
        # Scan only once the watch is in place: a file arriving between a scan and the start of
        # the watch would otherwise never be seen (until a restart). Seen twice is harmless.
        inbox = self._fd["inbox"]
        for name in sorted(os.listdir(inbox), key=lambda n: mtime(inbox, n)):
            self._consider(name, settle=True)
        self._thread.start()
        return leftovers

    def _open_folders(self) -> None:
        """The inbox as configured (the local config may name a symlink), then our own folders:
        each created if missing, opened without following a symlink, and refused unless it is a
        directory this process owns. All or nothing: a refusal closes what was opened."""
        self.path.mkdir(parents=True, exist_ok=True)
        # Nobody else may write in them: group members of the inbox may read what became of their files.
        folders = {"processing": (self.processing, 0o700), "failed": (self.failed, 0o750)}
        if self.keep_processed:
            folders["processed"] = (self.processed, 0o750)
        try:
            self._fd["inbox"] = os.open(self.path, DIR_FLAGS)
            self.shares_paths = only_owners_rename(self._fd["inbox"])
            if not self.shares_paths:
                log.warning("inbox: %s is writable by others without the sticky bit (chmod +t): they could "
                            "rename its folders, so engines get each file's audio, never its path", self.path)
            for key, (path, mode) in folders.items():
                self._fd[key] = open_own(path, mode)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the folders' descriptors (only once no job can finish any more)."""
        fds, self._fd = self._fd, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    # --- readiness -----------------------------------------------------------------------

    def _lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self._fd["inbox"], follow_symlinks=False)

    def _consider(self, name: str, settle: bool) -> None:
        """Schedule a completeness check: soon after a close or move, after settle_ms otherwise."""
        if not is_candidate_name(name):
            return
        try:
            st = self._lstat(name)
        except (FileNotFoundError, KeyError):
            return
        if stat.S_ISDIR(st.st_mode):
            return
        delay = self.settings.settle_ms / 1000 if settle else CLOSE_GRACE_S
        if settle and time.time() - st.st_mtime > delay:
            delay = CLOSE_GRACE_S   # found at start-up, untouched for long enough
        due = time.monotonic() + delay
        with self._cond:
            if name in self._ready or name in self._announcing:
                return
            self._seen[name] = (st.st_size, st.st_mtime_ns, due)   # the latest event decides
            heapq.heappush(self._due, (due, name))
            self._cond.notify_all()

    def _settle_loop(self) -> None:
        while (name := self._next_complete()) is not None:
            self._announce(name)   # outside the lock: it stores the `queued` event (SQLite)
            with self._cond:
                self._announcing.discard(name)
                self._ready.append(name)
            self._on_ready()

    def _next_complete(self) -> str | None:
        """Wait for the next file that is complete; None once stopped."""
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                if not self._due:
                    self._cond.wait()
                    continue
                due, name = self._due[0]
                if due > now:
                    self._cond.wait(due - now)
                    continue
                heapq.heappop(self._due)
                seen = self._seen.get(name)
                if seen is not None and seen[2] == due and self._check(name, seen):
                    self._announcing.add(name)
                    return name
        return None

    def _check(self, name: str, seen: tuple[int, int, float]) -> bool:
        try:
            st = self._lstat(name)
        except (FileNotFoundError, KeyError):
            self._seen.pop(name, None)
            return False
        if seen[:2] != (st.st_size, st.st_mtime_ns):
            # Still changing: wait for it to be stable for settle_ms.
            due = time.monotonic() + self.settings.settle_ms / 1000
            self._seen[name] = (st.st_size, st.st_mtime_ns, due)
            heapq.heappush(self._due, (due, name))
            return False
        self._seen.pop(name, None)
        return name not in self._ready and name not in self._announcing

    def take_ready(self) -> str | None:
        with self._cond:
            return self._ready.pop(0) if self._ready else None

    def forget_ready(self, name: str) -> None:
        """A file taken by name (a request) is no longer waiting for the feeder."""
        with self._cond:
            with contextlib.suppress(ValueError):
                self._ready.remove(name)

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def waiting_count(self) -> int:
        try:
            return sum(1 for e in os.scandir(self._fd["inbox"]) if is_candidate_name(e.name) and not e.is_dir())
        except (OSError, KeyError):
            return 0

    # --- claim and finish ----------------------------------------------------------------

    @property
    def processing_fd(self) -> int:
        """The open `.processing/` folder: a claimed file is opened relative to it."""
        return self._fd["processing"]

    def claim(self, name: str) -> Claimed | None:
        """Atomic rename into .processing/ (relative to both folders' descriptors); None if the
        file is gone (taken or removed)."""
        proc = self._fd["processing"]
        dst = unique_name(proc, fit_name(name))
        try:
            os.rename(name, dst, src_dir_fd=self._fd["inbox"], dst_dir_fd=proc)
        except FileNotFoundError:
            return None
        return Claimed(self.processing / dst, name)

    def claim_named(self, name: str) -> Claimed:
        """Claim a file a request names (attacker-chosen): a plain name the inbox would take, of a
        regular file waiting in the inbox, or a coded refusal and nothing touched."""
        if name != os.path.basename(name) or not is_candidate_name(name) or "\x00" in name:
            raise RequestError("'file' must name a file in the inbox folder", code="forbidden")
        if "inbox" not in self._fd:
            raise RequestError("the inbox is stopped (see its alert)", code="bad_request")
        try:
            st = self._lstat(name)
        except FileNotFoundError:
            raise RequestError(f"no file '{name[:200]}' is waiting in the inbox", code="not_found") from None
        except (OSError, ValueError):   # e.g. ENAMETOOLONG: no such name can be in the inbox
            raise RequestError("'file' must name a file in the inbox folder", code="forbidden") from None
        if not stat.S_ISREG(st.st_mode):
            raise RequestError("'file' must be a regular file inside the inbox (no symlinks)", code="forbidden")
        self.forget_ready(name)
        claimed = self.claim(name)
        if claimed is None:
            raise RequestError(f"'{name[:200]}' was taken by another job", code="not_found")
        return claimed

    def keep_job_id(self, claimed: Claimed, job_id: str) -> None:
        """Remember the job id beside the claimed file, so a run after a crash re-runs the job under
        the same id and consumers can drop the repeated events by job_id.

        It is kept as the text of a symlink in `.processing/` (ours, never followed, only read
        with readlink): a short link lives in its inode, so it is created whole or not at all, even
        on a full disk, where a file's content could be lost and leave it empty. Best effort."""
        if claimed.job_id == job_id:
            return
        proc, name = self._fd["processing"], job_id_name(claimed.path.name)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=proc)
            os.symlink(job_id, name, dir_fd=proc)
        except OSError as exc:
            log.warning("inbox: cannot remember the job id of %s: %s", claimed.original, exc)

    def finish(self, claimed: Claimed, record: dict[str, Any], ok: bool) -> Path:
        """Move the audio to processed/ or failed/ with its record beside it; one fsync.

        1. The record is written and fsynced as `.<final><PENDING_SUFFIX>` in the destination.
           A crash before the next step leaves the audio claimed: it runs again under the same
           job id (the job's events were stored before this finish, so a re-run only repeats
           them) and `start` removes the pending record.
        2. The audio is renamed from `.processing/` to `<dest>/<final>`. This is the commit point:
           from here on a restart completes the finish, because an audio file beside its pending
           record can only come from step 1 having ended, fsync included.
        3. The pending record is renamed to `<final>.json` (or `.error.json`).
        Renames need no fsync of their own: one lost to a power cut only moves the file back a
        step, and the record is never visible before its content is on disk. Every step is
        relative to the folders' descriptors opened at start. An OSError (a full disk) leaves
        the audio claimed and nothing else behind: the finish can simply be tried again.
        """
        if ok and not self.keep_processed:
            return self._delete(claimed)
        dest_dir, dest = (self.processed, self._fd["processed"]) if ok else (self.failed, self._fd["failed"])
        proc = self._fd["processing"]
        final, fd = _reserve(dest, fit_name(claimed.original), ok)
        pending = pending_name(final, ok)
        try:
            _write_synced(fd, record)
            os.rename(claimed.path.name, final, src_dir_fd=proc, dst_dir_fd=dest)
        except Exception:
            with contextlib.suppress(OSError):
                os.unlink(pending, dir_fd=dest)   # the audio stays claimed; the job is run again
            raise
        os.rename(pending, final + RECORD_SUFFIX[ok], src_dir_fd=dest, dst_dir_fd=dest)
        self._remove_job_id(claimed.path.name)
        return dest_dir / final

    def _delete(self, claimed: Claimed) -> Path:
        """Success with keep_processed=False: the unlink is the one atomic step, so no fsync. A
        crash before it runs the job again under the same job id; after it only the job id file
        is left, which `start` removes."""
        os.unlink(claimed.path.name, dir_fd=self._fd["processing"])
        self._remove_job_id(claimed.path.name)
        return claimed.path

    def _remove_job_id(self, audio: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job_id_name(audio), dir_fd=self._fd["processing"])


def _reserve(folder: int, name: str, ok: bool) -> tuple[str, int]:
    """A free final name in `folder` and the open fd of its pending record, which reserves it
    (O_EXCL, under _NAMES) against any other finish in this process."""
    suffixes = tuple(RECORD_SUFFIX.values())
    with _NAMES:
        final = unique_name(folder, name, also=suffixes, hidden=tuple(PENDING_SUFFIX.values()))
        fd = os.open(pending_name(final, ok), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666, dir_fd=folder)
    return final, fd


def _record_bytes(data: dict[str, Any]) -> bytes:
    # backslashreplace: a file name that is not UTF-8 (a surrogate-escaped str) is written as the
    # JSON escape "\udcff" and reads back as the same name, instead of failing the finish.
    return json.dumps(data, indent=2, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")


def _write_synced(fd: int, data: dict[str, Any]) -> None:
    """Write a record to an open fd, fsync and close it (one fsync: the only one of a finish)."""
    try:
        view = memoryview(_record_bytes(data))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
