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

from agent.settings import InboxSettings
from agent.sources.inbox_names import (JOB_ID, PENDING_SUFFIX, RECORD_SUFFIX, fit_name, job_id_path, parse_pending,
                                       pending_path, read_job_id, unique_path)
from agent.sources.inbox_watch import InboxEvents, shorten_move_pairing

log = logging.getLogger(__name__)

PROCESSING = ".processing"
INTENT = ".finish.json"   # the finish intent of earlier versions, still completed at start
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
    def __init__(self, settings: InboxSettings, on_ready: Callable[[str], None], *,
                 keep_processed: bool = True) -> None:
        self.settings = settings
        self.keep_processed = keep_processed
        self.path = Path(settings.path)
        self.processed = Path(settings.processed_dir or self.path / "processed")
        self.failed = Path(settings.failed_dir or self.path / "failed")
        self.processing = self.path / PROCESSING
        self._on_ready = on_ready
        self._cond = threading.Condition()
        self._due: list[tuple[float, str]] = []          # heap of (due time, name) to re-check
        self._seen: dict[str, tuple[int, int, float]] = {}   # name -> (size, mtime_ns, due) of the latest event
        self._ready: list[str] = []                      # complete files, in order
        self._stop = False
        self._observer: Any = None
        self._thread = threading.Thread(target=self._settle_loop, name="inbox-settle", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> list[Claimed]:
        """Create folders, complete interrupted finishes, and return claims left by a crash."""
        for d in (self.path, self.failed, self.processing, *([self.processed] if self.keep_processed else [])):
            d.mkdir(parents=True, exist_ok=True)
        self._recover_finishes()
        self._remove_stale_temp_files()
        # Hidden names are our own bookkeeping (a temp file a crash left), never a claimed audio file.
        leftovers = [Claimed(p, p.name, read_job_id(p)) for p in sorted(self.processing.iterdir(), key=_mtime)
                     if is_candidate_name(p.name) and not p.is_dir() and not p.name.endswith(INTENT)]
        shorten_move_pairing()
        self._observer = Observer()
        self._observer.schedule(InboxEvents(self.path, self._consider), str(self.path), recursive=False)
        self._observer.start()
        # Scan only once the watch is in place: a file arriving between a scan and the start of
        # the watch would otherwise never be seen (until a restart). Seen twice is harmless.
        for p in sorted(self.path.iterdir(), key=_mtime):
            self._consider(p.name, settle=True)
        self._thread.start()
        return leftovers

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    # --- readiness -----------------------------------------------------------------------

    def _consider(self, name: str, settle: bool) -> None:
        """Schedule a completeness check: soon after a close or move, after settle_ms otherwise."""
        if not is_candidate_name(name):
            return
        try:
            st = os.lstat(self.path / name)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            return
        delay = self.settings.settle_ms / 1000 if settle else CLOSE_GRACE_S
        if settle and time.time() - st.st_mtime > delay:
            delay = CLOSE_GRACE_S   # found at start-up, untouched for long enough
        due = time.monotonic() + delay
        with self._cond:
            if name in self._ready:
                return
            self._seen[name] = (st.st_size, st.st_mtime_ns, due)   # the latest event decides
            heapq.heappush(self._due, (due, name))
            self._cond.notify_all()

    def _settle_loop(self) -> None:
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
                if seen is not None and seen[2] == due:
                    self._check(name, seen)

    def _check(self, name: str, seen: tuple[int, int, float]) -> None:
        try:
            st = os.lstat(self.path / name)
        except FileNotFoundError:
            self._seen.pop(name, None)
            return
        if seen[:2] != (st.st_size, st.st_mtime_ns):
            # Still changing: wait for it to be stable for settle_ms.
            due = time.monotonic() + self.settings.settle_ms / 1000
            self._seen[name] = (st.st_size, st.st_mtime_ns, due)
            heapq.heappush(self._due, (due, name))
            return
        self._seen.pop(name, None)
        if name not in self._ready:
            self._ready.append(name)
            self._on_ready(name)

    def take_ready(self) -> str | None:
        with self._cond:
            return self._ready.pop(0) if self._ready else None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def waiting_count(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.path) if is_candidate_name(e.name) and not e.is_dir())
        except OSError:
            return 0

    # --- claim and finish ----------------------------------------------------------------

    def claim(self, name: str) -> Claimed | None:
        """Atomic rename into .processing/; None if the file is gone (taken or removed)."""
        src = self.path / name
        dst = unique_path(self.processing, fit_name(name))
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return None
        return Claimed(dst, name)

    def keep_job_id(self, claimed: Claimed, job_id: str) -> None:
        """Remember the job id beside the claimed file, so a run after a crash re-runs the job under
        the same id and consumers can drop the repeated events by job_id. Best effort."""
        try:
            job_id_path(claimed.path).write_text(job_id)
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
        step, and the record is never visible before its content is on disk.
        """
        if ok and not self.keep_processed:
            return self._delete(claimed)
        dest_dir = self.processed if ok else self.failed
        final, fd = _reserve(dest_dir, fit_name(claimed.original), ok)
        pending = pending_path(final, ok)
        try:
            _write_synced(fd, record)
            os.rename(claimed.path, final)
        except Exception:
            with contextlib.suppress(OSError):
                os.unlink(pending)   # the audio stays claimed; the job is run again
            raise
        os.rename(pending, final.with_name(final.name + RECORD_SUFFIX[ok]))
        _remove_job_id(claimed.path)
        return final

    def _delete(self, claimed: Claimed) -> Path:
        """Success with keep_processed=False: the unlink is the one atomic step, so no fsync. A
        crash before it runs the job again under the same job id; after it only the job id file
        is left, which `start` removes."""
        os.unlink(claimed.path)
        _remove_job_id(claimed.path)
        return claimed.path

    def _complete_pending(self) -> None:
        """Finish the finishes a crash interrupted (see `finish`): a pending record whose audio
        reached the destination becomes the record; one whose audio is still claimed is dropped,
        and the claimed audio is taken again."""
        folders = {self.failed, *([self.processed] if self.keep_processed else [])}
        for folder in folders:
            for pending in folder.glob(".*.pending"):
                try:
                    self._complete_one(pending)
                except OSError as exc:
                    log.error("inbox: cannot complete the finish of %s: %s", pending.name, exc)

    def _complete_one(self, pending: Path) -> None:
        parsed = parse_pending(pending)
        if parsed is None:
            return
        final, ok = parsed
        record = final.with_name(final.name + RECORD_SUFFIX[ok])
        if os.path.lexists(final) and not os.path.lexists(record):
            os.rename(pending, record)
            log.info("inbox: completed the interrupted finish of %s", final.name)
        else:
            os.unlink(pending)

    def _complete_intent(self, audio: Path, intent: Path) -> None:
        """An intent file left by a version before the one-fsync finish: the same plan, completed."""
        plan = json.loads(intent.read_text())
        if plan.get("delete"):
            if os.path.lexists(audio):
                os.unlink(audio)
            _remove_job_id(audio)
            os.unlink(intent)
            return
        dest = Path(plan["dest"])
        if os.path.lexists(audio):
            os.rename(audio, dest / plan["final"])
        _write_json(dest / plan["record_name"], plan["record"])
        _remove_job_id(audio)
        os.unlink(intent)   # the intent file is our own bookkeeping, not user data

    def _remove_stale_temp_files(self) -> None:
        """`.<name>.tmp` files that `_write_json` was writing when the process was killed."""
        for folder in (self.processing, self.processed, self.failed):
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.json.tmp"):
                try:
                    p.unlink()
                except OSError as exc:
                    log.warning("inbox: cannot remove the stale temp file %s: %s", p, exc)
        for p in self.processing.glob(".*" + JOB_ID):   # job ids of files that are no longer here
            if not os.path.lexists(p.with_name(p.name[1:-len(JOB_ID)])):
                with contextlib.suppress(OSError):
                    p.unlink()

    def _recover_finishes(self) -> None:
        self._complete_pending()
        for intent in self.processing.glob("*" + INTENT):
            audio = intent.with_name(intent.name[: -len(INTENT)])
            try:
                self._complete_intent(audio, intent)
                log.info("inbox: completed the interrupted finish of %s", audio.name)
            except (OSError, ValueError, KeyError) as exc:
                log.error("inbox: cannot complete the finish of %s: %s", audio.name, exc)


def _mtime(p: Path) -> float:
    try:
        return p.lstat().st_mtime
    except OSError:
        return 0.0


def _reserve(folder: Path, name: str, ok: bool) -> tuple[Path, int]:
    """A free final name in `folder` and the open fd of its pending record, which reserves it
    (O_EXCL, under _NAMES) against any other finish in this process."""
    suffixes = tuple(RECORD_SUFFIX.values())
    with _NAMES:
        final = unique_path(folder, name, also=suffixes, hidden=tuple(PENDING_SUFFIX.values()))
        fd = os.open(pending_path(final, ok), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    return final, fd


def _remove_job_id(audio: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(job_id_path(audio))


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace with fsync; only for completing an earlier version's intent."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_synced(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666), data)
    os.replace(tmp, path)
