"""Takes complete inbox files one job slot at a time and runs each through the pipeline.

Waiting files stay on disk (no memory per file); the feeder sleeps on a condition until a file
is ready, a slot is free, and the agent is neither paused nor under memory pressure.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Callable, ContextManager

from agent.errors import AgentError, AudioError
from agent.sources.inbox import Claimed, Inbox
from agent.jobs.slot import JobSlot, new_job_id
from agent.jobs.pipeline import Job, Loaded, Pipeline, Source
from agent.settings import InboxSettings

log = logging.getLogger(__name__)


def load_audio_file(path: Path, settings: InboxSettings) -> Loaded:
    """Refuse what is not a regular file before opening it: a FIFO would block, a symlink escape."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise AudioError("symbolic links are not taken from the inbox", code="forbidden")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError("not a regular file", code="unsupported_format")
    from agent.audio.wav import decode_file  # numpy: loaded with the first audio, not at start

    audio = decode_file(path, max_bytes=settings.max_bytes, max_duration_s=settings.max_duration_s)
    return Loaded(audio, file_hash(path))


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class InboxWorker:
    def __init__(self, settings: InboxSettings, slot: JobSlot, pipeline: Pipeline, *, kind: str = "inbox",
                 may_take: Callable[[], bool], job_event: Callable[..., None],
                 watch: Callable[[str, int], ContextManager[None]], batch_size: Callable[[], int] = lambda: 1,
                 keep_processed: bool = True) -> None:
        """`keep_processed=False` deletes a file once processed (the mic spool); failed ones are kept."""
        self.inbox = Inbox(settings, self.on_ready, keep_processed=keep_processed)
        self._watch = watch
        self._batch_size = batch_size
        self.slot = slot
        self.pipeline = pipeline
        self.kind = kind
        self._may_take = may_take
        self._job_event = job_event
        self._cond = threading.Condition()
        self._stop = False
        self._leftovers: list[Claimed] = []
        self._queued: dict[str, str] = {}   # ready file name -> job id announced as queued
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
        self.inbox.stop()
        self._thread.join(timeout=5)
        for t in list(self._active):
            t.join(timeout=grace_s)

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def _has_work(self) -> bool:
        return bool(self._leftovers) or self.inbox.ready_count > 0

    def _feed(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or (self._has_work() and self._may_take()), timeout=5)
                if self._stop:
                    return
                if not (self._has_work() and self._may_take()):
                    continue
            if not self.slot.acquire(timeout=1):
                continue
            batch = self._claim_batch()
            if not batch:
                self.slot.release()
                continue
            t = threading.Thread(target=self._jobs, args=(batch,), name=f"{self.kind}-job", daemon=True)
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
        if self._leftovers:
            return self._leftovers.pop(0)
        name = self.inbox.take_ready()
        return self.inbox.claim(name) if name else None

    def _run_one(self, job: Job) -> dict | AgentError:
        try:
            return self.pipeline.run(job.job_id, job.source, job.load)
        except AgentError as exc:
            return exc

    def _loader(self, claimed: Claimed) -> Callable[[], Loaded]:
        return lambda: load_audio_file(claimed.path, self.inbox.settings)

    def _source(self, name: str) -> Source:
        """A microphone segment's spool file is named after its segment id."""
        if self.kind == "mic":
            return Source("mic", name, segment_id=name.rsplit(".", 1)[0])
        return Source(self.kind, name)

    def _jobs(self, batch: list[tuple[Claimed, str]]) -> None:
        jobs = [Job(job_id, self._source(c.original), self._loader(c)) for c, job_id in batch]
        try:
            with self._watch(jobs[0].job_id, len(jobs)):   # one allowance per file of the batch
                if len(jobs) == 1:
                    results: list[dict | AgentError] = [self._run_one(jobs[0])]
                else:
                    results = self.pipeline.run_batch(jobs)
            for (claimed, _), job, result in zip(batch, jobs, results):
                if isinstance(result, AgentError):
                    record = {"job_id": job.job_id, "source": job.source.as_dict(), **result.as_dict()}
                    self.inbox.finish(claimed, record, ok=False)
                else:
                    self.inbox.finish(claimed, result, ok=True)
        except Exception:
            log.exception("%s: finishing %s failed; they stay in %s", self.kind,
                          ", ".join(c.original for c, _ in batch), self.inbox.processing)
        finally:
            self._active.discard(threading.current_thread())
            self.slot.release()
            self.poke()
