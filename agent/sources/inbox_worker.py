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
from typing import Callable

from agent.errors import AgentError
from agent.sources.inbox import Claimed, Inbox
from agent.sources.segment_names import parse_segment_file
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
                 keep_processed: bool = True, retries: Retries | None = None) -> None:
        """`keep_processed=False` deletes a file once processed (the mic spool); failed ones are kept.
        `retries`: which failed files stay queued for another try (agent/jobs/retry.py)."""
        self.inbox = Inbox(settings, self.on_ready, keep_processed=keep_processed)
        self._admission = admission
        self._runner = runner
        self._batch_size = batch_size
        self.kind = kind
        self._job_event = job_event
        self._cond = threading.Condition()
        self._stop = False
        self._leftovers: list[Claimed] = []
        self._queued: dict[str, str] = {}   # ready file name -> job id announced as queued
        self._retries = retries or Retries()
        self._retrying: list[tuple[float, Claimed]] = []   # (due, claimed file kept for another try)
        self._active: set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._feed, name=f"{kind}-feeder", daemon=True)

    def start(self) -> None:
        self._leftovers = self.inbox.start()
        if self._leftovers:
            log.info("%s: %d file(s) claimed by an interrupted run are taken again", self.kind, len(self._leftovers))
        self._thread.start()

    def on_ready(self, name: str) -> None:
        """A complete file is waiting: announce its job as queued and wake the feeder."""
        job_id = new_job_id()
        self._queued[name] = job_id
        self._job_event(job_id, "queued", self._source(name).as_dict())
        self.poke()

    def poke(self) -> None:
        """Something changed (file ready, slot freed, resumed): re-check whether work can start."""
        with self._cond:
            self._cond.notify_all()

    def stop(self, grace_s: float) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._admission.wake()
        self.inbox.stop()
        self._thread.join(timeout=5)
        for t in list(self._active):
            t.join(timeout=grace_s)

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
                self._cond.wait_for(lambda: self._stop or self._has_work(), timeout=self._wait_s())
                if self._stop:
                    return
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
            job_id = self._queued.pop(claimed.original, None) or claimed.job_id or new_job_id()
            self.inbox.keep_job_id(claimed, job_id)   # a re-run after a crash keeps it
            batch.append((claimed, job_id))
        return batch

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
        return lambda: load_audio_file(claimed.path, self.inbox.settings)

    def _source(self, name: str) -> Source:
        """A microphone segment's spool file is named after its segment id (and its wake word)."""
        if self.kind == "mic":
            segment_id, wake = parse_segment_file(name)
            return Source("mic", name, segment_id=segment_id, wake=wake)
        return Source(self.kind, name)

    def _jobs(self, ticket: Ticket, batch: list[tuple[Claimed, str]]) -> None:
        jobs = [Job(job_id, self._source(c.original), self._loader(c)) for c, job_id in batch]
        try:
            self._runner.run(ticket, jobs, finish=lambda results: self._finish(batch, jobs, results))
        except Exception:
            log.exception("%s: finishing %s failed; they stay in %s", self.kind,
                          ", ".join(c.original for c, _ in batch), self.inbox.processing)
        finally:
            self._active.discard(threading.current_thread())
            self.poke()

    def _finish(self, batch: list[tuple[Claimed, str]], jobs: list[Job], results: list[Result]) -> None:
        for (claimed, _), job, result in zip(batch, jobs, results):
            key = str(claimed.path)
            if isinstance(result, AgentError):
                delay, tries = self._retries.after_failure(key, result)
                if delay is not None:
                    self._keep(replace(claimed, job_id=job.job_id), job, result, delay, tries)
                    continue
                record = {"job_id": job.job_id, "source": job.source.as_dict(), **result.as_dict()}
                if tries > 1:
                    record["tries"] = tries
                self.inbox.finish(claimed, record, ok=False)
            else:
                self._retries.forget(key)
                self.inbox.finish(claimed, result, ok=True)

    def _keep(self, claimed: Claimed, job: Job, error: AgentError, delay: float, tries: int) -> None:
        """Not the file's fault: it stays claimed, queued again under its job id, for another try."""
        log.warning("%s: %s failed (%s: %s); try %d of %d in %.0f s", self.kind, claimed.original, error.code,
                    error.message, tries + 1, self._retries.policy.tries, delay)
        with self._cond:
            self._retrying.append((time.monotonic() + delay, claimed))
        self._job_event(job.job_id, "queued", job.source.as_dict(),
                        retry={"try": tries + 1, "of": self._retries.policy.tries, "after_s": round(delay, 1),
                               "error": error.as_dict()})
