"""Takes complete inbox files one job slot at a time and runs each through the pipeline.

Waiting files stay on disk (no memory per file); the feeder sleeps on a condition until a file
is ready, then in admission (agent/jobs/admission.py) until a slot is free and the agent is
neither paused, stopping nor under memory pressure; the runner watches, runs and releases.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from agent.errors import AgentError, RequestError
from agent.sources.inbox import Claimed, Inbox
from agent.sources.segment_names import parse_segment_file
from agent.sources.inbox_folders import FolderRefused
from agent.jobs.admission import Admission, Ticket
from agent.jobs.runner import Result, Runner
from agent.jobs.slot import new_job_id
from agent.jobs.loading import load_audio_file
from agent.jobs.retry import Retries
from agent.jobs.pipeline import Job, Loaded, Source
from agent.settings import InboxSettings

log = logging.getLogger(__name__)


def spool_settings(inbox: InboxSettings, path: Path) -> InboxSettings:
    """The microphone spool is an inbox of its own: always on, nothing kept once processed."""
    return replace(inbox, enabled=True, path=str(path), processed_dir=None, failed_dir=None, settle_ms=200)


class InboxWorker:
    def __init__(self, settings: InboxSettings, admission: Admission, runner: Runner, *, kind: str = "inbox",
                 job_event: Callable[..., None], batch_size: Callable[[], int] = lambda: 1,
                 keep_processed: bool = True, retries: Retries | None = None,
                 on_folders: Callable[[str, str | None], None] = lambda kind, problem: None) -> None:
        """`keep_processed=False` deletes a file once processed (the mic spool); failed ones are kept.
        `retries`: which failed files stay queued for another try (agent/jobs/retry.py).
        `on_folders(kind, problem)`: at start, a folder refused (the inbox then stays stopped) or
        None (all folders are ours)."""
        self.inbox = Inbox(settings, self.poke, announce=self.announce, keep_processed=keep_processed)
        self._admission = admission
        self._runner = runner
        self._batch_size = batch_size
        self.kind = kind
        self._job_event = job_event
        self._on_folders = on_folders
        self._cond = threading.Condition()
        self._stop = False
        self._started = False
        self._leftovers: list[Claimed] = []
        self._queued: dict[str, str] = {}   # ready file name -> job id announced as queued
        self._retries = retries or Retries()
        self._retrying: list[tuple[float, Claimed]] = []   # (due, claimed file kept for another try)
        self._unfinished: list[tuple[Claimed, dict[str, Any], bool]] = []   # finishes a full disk refused
        self._retry = False
        self._active: set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._feed, name=f"{kind}-feeder", daemon=True)

    def start(self) -> None:
        """Start, unless a folder of ours is refused: then an alert, and nothing is moved or run."""
        try:
            self._leftovers = self.inbox.start()
        except FolderRefused as exc:
            log.error("%s: %s; it stays stopped until its folders are fixed and it is restarted", self.kind, exc)
            self._on_folders(self.kind, str(exc))
            return
        self._on_folders(self.kind, None)
        self._started = True
        if self._leftovers:
            log.info("%s: %d file(s) claimed by an interrupted run are taken again", self.kind, len(self._leftovers))
        self._thread.start()

    def announce(self, name: str) -> None:
        """A complete file, not yet takeable: its job is announced as queued (no lock held)."""
        job_id = new_job_id()
        self._queued[name] = job_id
        self._job_event(job_id, "queued", self._source(name).as_dict())

    def poke(self) -> None:
        """Something changed (file ready, slot freed, resumed, disk space back): re-check whether
        work can start and whether a finish a full disk refused can be done now."""
        with self._cond:
            self._retry = bool(self._unfinished)
            self._cond.notify_all()

    def stop(self, grace_s: float) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._admission.wake()
        self.inbox.stop()
        if not self._started:
            self.inbox.close()
            return
        self._thread.join(timeout=5)
        for t in list(self._active):
            t.join(timeout=grace_s)
        if not any(t.is_alive() for t in self._active):
            self.inbox.close()   # else a job still finishing uses the folders (shutdown: the process ends)

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def _has_work(self) -> bool:
        return bool(self._leftovers) or self.inbox.ready_count > 0 or self._retry_due() is not None

    def _retry_due(self) -> Claimed | None:
        now = time.monotonic()
        return next((claimed for due, claimed in self._retrying if due <= now), None)

    def _wait_s(self) -> float:
        """Until the next kept file is due (at most 5 s)."""
        if not self._retrying:
            return 5.0
        return max(0.05, min(5.0, min(due for due, _ in self._retrying) - time.monotonic()))

    def _feed(self) -> None:
        """Wait for a file, then for admission (paused, memory, stopping, a free slot), then claim."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._retry or self._has_work(), timeout=self._wait_s())
                if self._stop:
                    return
                self._retry = False
            self._retry_finishes()
            if not self._has_work():
                continue
            ticket = self._admission.admit(timeout=1, cancelled=lambda: self._stop)
            if ticket is None:
                continue
            batch = self._claim_batch()
            if not batch:
                ticket.release()
                continue
            t = threading.Thread(target=self._jobs, args=(ticket, batch), name=f"{self.kind}-job", daemon=True)
            self._active.add(t)
            t.start()

    def _claim_batch(self) -> list[tuple[Claimed, str]]:
        """One file, or several when the engine loads its model per run (one slot for all)."""
        batch: list[tuple[Claimed, str]] = []
        while len(batch) < max(1, self._batch_size()):
            claimed = self._next_claim()
            if claimed is None:
                break
            batch.append((claimed, self._job_id(claimed)))
        return batch

    def _job_id(self, claimed: Claimed, fresh: str | None = None) -> str:
        """The id announced when the file was queued, or the one it ran under before a crash (else
        `fresh`, or a new one); kept beside the claimed file so that any re-run keeps it."""
        job_id = self._queued.pop(claimed.original, None) or claimed.job_id or fresh or new_job_id()
        self.inbox.keep_job_id(claimed, job_id)
        return job_id

    def _next_claim(self) -> Claimed | None:
        with self._cond:
            due = self._retry_due()
            if due is not None:
                self._retrying = [(t, c) for t, c in self._retrying if c is not due]
                return due
        if self._leftovers:
            return self._leftovers.pop(0)
        name = self.inbox.take_ready()
        return self.inbox.claim(name) if name else None

    def _loader(self, claimed: Claimed) -> Callable[[], Loaded]:
        return lambda: load_audio_file(claimed.path, self.inbox.settings, dir_fd=self.inbox.processing_fd,
                                       share_path=self.inbox.shares_paths)

    def _source(self, name: str) -> Source:
        """A microphone segment's spool file is named after its segment id (and its wake word)."""
        if self.kind == "mic":
            segment_id, wake = parse_segment_file(name)
            return Source("mic", name, segment_id=segment_id, wake=wake)
        return Source(self.kind, name)

    def run_named(self, name: str, job_id: str, summarize: bool) -> dict[str, Any]:
        """A `transcribe` request for a file waiting in the inbox (the caller holds the slot): the
        file is claimed, run through the one runner and finished exactly as a dropped file, under
        the job id it was announced with as queued (else the request's `job_id`). Returns the
        record; raises the job's AgentError (after its failure record is written) or a coded
        RequestError."""
        if not self._started:
            raise RequestError("the inbox is stopped (see its alert)", code="bad_request")
        claimed = self.inbox.claim_named(name)
        job = Job(self._job_id(claimed, job_id), Source("request", claimed.original), self._loader(claimed), summarize)
        [result] = self._runner.run_admitted([job], finish=lambda results: self._finish([claimed], [job], results))
        if isinstance(result, AgentError):
            raise result
        return result

    def _jobs(self, ticket: Ticket, batch: list[tuple[Claimed, str]]) -> None:
        claims = [c for c, _ in batch]
        jobs = [Job(job_id, self._source(c.original), self._loader(c)) for c, job_id in batch]
        try:
            self._runner.run(ticket, jobs, finish=lambda results: self._finish(claims, jobs, results))
        except Exception:
            log.exception("%s: running %s failed; they stay in %s", self.kind,
                          ", ".join(c.original for c in claims), self.inbox.processing)
        finally:
            self._active.discard(threading.current_thread())
            self.poke()

    def _finish(self, claims: list[Claimed], jobs: list[Job], results: list[Result]) -> None:
        for claimed, job, result in zip(claims, jobs, results):
            key = str(claimed.path)
            if isinstance(result, AgentError):
                delay, tries = self._retries.after_failure(key, result)
                if delay is not None:
                    self._keep(replace(claimed, job_id=job.job_id), job, result, delay, tries)
                    continue
                record = {"job_id": job.job_id, "source": job.source.as_dict(), **result.as_dict()}
                if tries > 1:
                    record["tries"] = tries
                self._finish_one(claimed, record, ok=False)
            else:
                self._retries.forget(key)
                self._finish_one(claimed, result, ok=True)

    def _finish_one(self, claimed: Claimed, record: dict[str, Any], ok: bool) -> None:
        """A finish a full disk (any OSError) refuses is kept and tried again on the next poke (the
        disk alert clearing pokes every source) or within 5 s; the file stays claimed meanwhile,
        with its job id, so a restart before then re-runs it under the same id."""
        try:
            self.inbox.finish(claimed, record, ok)
        except OSError as exc:
            log.error("%s: cannot finish %s (%s); it stays in %s and the finish is tried again",
                      self.kind, claimed.original, exc, self.inbox.processing)
            with self._cond:
                self._unfinished.append((claimed, record, ok))

    def _retry_finishes(self) -> None:
        with self._cond:
            todo, self._unfinished = self._unfinished, []
        for claimed, record, ok in todo:
            self._finish_one(claimed, record, ok)

    def _keep(self, claimed: Claimed, job: Job, error: AgentError, delay: float, tries: int) -> None:
        """Not the file's fault: it stays claimed, queued again under its job id, for another try."""
        log.warning("%s: %s failed (%s: %s); try %d of %d in %.0f s", self.kind, claimed.original, error.code,
                    error.message, tries + 1, self._retries.policy.tries, delay)
        with self._cond:
            self._retrying.append((time.monotonic() + delay, claimed))
        self._job_event(job.job_id, "queued", job.source.as_dict(),
                        retry={"try": tries + 1, "of": self._retries.policy.tries, "after_s": round(delay, 1),
                               "error": error.as_dict()})
