"""Jobs: audio -> transcript -> summary -> events, with their lifecycle on `event/job`.

The transcript is published the moment it exists, before any summary is attempted: a summarizer
that fails or hangs must never cost the user a good transcript (the summary step and its
fallback live in agent.jobs.summary). While a transcriber works on a long recording it reports
its progress, published as `event/progress` (agent.jobs.progress).

Every source (inbox file, microphone segment, request) goes through here, so a transcript
looks the same whatever produced it. Each stage has its own bounded concurrency, so with two
job slots job N can be summarized while job N+1 is transcribed without two transcriptions
fighting over the cores. Identical audio (by content hash) and identical text reuse earlier
results from bounded LRU caches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from agent.audio.clip import Audio

from agent.engines import deadline
from agent.engines.base import Summary, Transcript
from agent.engines.runtime import Engines
from agent.errors import AgentError
from agent.jobs.lru import LRUCache
from agent.jobs.progress import JobProgress
from agent.jobs.stage import Stage
from agent.jobs.summary import SummaryObserver, SummaryOutcome, SummaryStep
from agent.settings import Settings, SummarizerSettings

log = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]


@dataclass(frozen=True)
class Source:
    kind: str                      # "inbox" | "mic" | "request"
    name: str
    segment_id: str | None = None
    wake: dict[str, Any] | None = None   # a microphone segment after a wake word: {model, probability}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("segment_id", "wake"):
            if d[key] is None:
                d.pop(key)
        return d


@dataclass(frozen=True)
class Loaded:
    audio: Audio
    content_hash: str


@dataclass
class Job:
    """One job's progress through the stages."""

    job_id: str
    source: Source
    load: Callable[[], Loaded]
    summarize: bool = True
    loaded: Loaded | None = None
    transcript: Transcript | None = None
    speech_s: float | None = None      # how much of the audio the VAD calls speech
    timings: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)


class Pipeline:
    def __init__(self, engines: Engines, emit: Emit, *, cache_size: int,
                 transcribe_concurrency: int = 1, summarize_concurrency: int = 1,
                 speech_seconds: Callable[[Audio], float] = lambda audio: audio.duration_s,
                 summarizer_settings: SummarizerSettings = SummarizerSettings(),
                 on_summary: SummaryObserver = lambda fallback: None,
                 emit_ephemeral: Emit = lambda event, body: None, progress_interval_s: float = 0.0) -> None:
        """`engines` is the one Engines object (it swaps its own engines on a config change);
        `emit` stores events durably, `emit_ephemeral` only sends them (progress, see
        agent.jobs.progress); settings that change are pushed by `reconfigure`."""
        self._engines = engines
        self._emit = emit
        self._speech_seconds = speech_seconds
        self.transcripts = LRUCache(cache_size)
        self.transcribe_stage = Stage(transcribe_concurrency)
        self.summary = SummaryStep(cache_size=cache_size, concurrency=summarize_concurrency,
                                   settings=summarizer_settings,
                                   on_summary=on_summary)
        self.progress = JobProgress(lambda body: emit_ephemeral("progress", body), progress_interval_s)
        self.done = 0
        self.failed = 0

    def reconfigure(self, settings: Settings) -> None:
        """A new config, pushed by the app. Jobs already inside a stage finish under the old bound;
        new ones use the new one."""
        if settings.transcriber.concurrency != self.transcribe_stage.limit:
            self.transcribe_stage = Stage(settings.transcriber.concurrency)
        self.summary.reconfigure(settings.summarizer)
        self.progress.set_interval(settings.jobs.progress_interval_s)

    def job_event(self, job_id: str, state: str, source: dict[str, Any], **extra: Any) -> None:
        """A job's `event/job`; the running jobs that `state` lists follow these events, so every
        kind of job (a `summarize` request too) is listed while it runs."""
        if state == "running":
            self.progress.started(job_id, source)
        elif state in ("done", "failed"):
            self.progress.ended(job_id)
        self._emit("job", {"job_id": job_id, "state": state, "source": source, **extra})

    # --- one job -------------------------------------------------------------------------

    def run(self, job_id: str, source: Source, load: Callable[[], Loaded], *,
            summarize: bool = True) -> dict[str, Any]:
        """Run one job to the end; returns its record. Raises AgentError after `failed` is published."""
        job = Job(job_id, source, load, summarize)
        self._start(job)
        return self._guard(job, lambda: self._finish(job, self._transcribe(job)))

    # --- several jobs whose transcriptions share one engine run --------------------------

    def run_batch(self, jobs: list[Job]) -> list[dict[str, Any] | AgentError]:
        """Transcribe the jobs in one engine call (the model loads once); each then finishes
        alone, so a bad file fails by itself."""
        results: dict[str, dict[str, Any] | AgentError] = {}
        ready: list[Job] = []
        for job in jobs:
            self._start(job)
            try:
                self._guard(job, lambda job=job: self._load(job))
                ready.append(job)
            except AgentError as exc:
                results[job.job_id] = exc
        transcripts = self._transcribe_many(ready)
        for job, transcript in zip(ready, transcripts):
            try:
                results[job.job_id] = self._guard(job, lambda job=job, t=transcript: self._finish(job, _raise(t)))
            except AgentError as exc:
                results[job.job_id] = exc
        return [results[job.job_id] for job in jobs]

    # --- stages --------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        job.t0 = time.monotonic()
        self.job_event(job.job_id, "running", job.source.as_dict())

    def _guard(self, job: Job, step: Callable[[], Any]) -> Any:
        """Run a step; any failure publishes `failed` once and becomes an AgentError."""
        try:
            return step()
        except AgentError as exc:
            self._failed(job, exc)
            raise
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.job_id)
            err = AgentError(f"internal error: {type(exc).__name__}")
            self._failed(job, err)
            raise err from exc

    def _failed(self, job: Job, exc: AgentError) -> None:
        self.failed += 1
        self.job_event(job.job_id, "failed", job.source.as_dict(), error=exc.as_dict())

    def _load(self, job: Job) -> Loaded:
        t0 = time.monotonic()
        job.loaded = job.load()
        job.timings["decode"] = _ms(t0)
        t0 = time.monotonic()
        job.speech_s = round(self._speech_seconds(job.loaded.audio), 2)
        job.timings["vad"] = _ms(t0)
        return job.loaded

    def _transcribe(self, job: Job) -> Transcript:
        loaded = self._load(job)
        deadline.check()
        t0 = time.monotonic()
        engines = self._engines
        key = (engines.transcriber.name, loaded.content_hash)
        transcript = self.transcripts.get(key)
        if transcript is None:
            with self.transcribe_stage:
                transcript = engines.transcribe(loaded.audio, progress=self.progress.reporter(job.job_id))
            self.transcripts.put(key, transcript)
        job.timings["transcribe"] = _ms(t0)
        return transcript

    def _transcribe_many(self, jobs: list[Job]) -> list[Transcript | Exception]:
        engines = self._engines
        t0 = time.monotonic()
        keys = [(engines.transcriber.name, job.loaded.content_hash) for job in jobs]  # type: ignore[union-attr]
        found: list[Transcript | Exception | None] = [self.transcripts.get(k) for k in keys]
        todo = [i for i, t in enumerate(found) if t is None]
        if todo:
            try:
                with self.transcribe_stage:
                    fresh = engines.transcribe_batch([jobs[i].loaded.audio for i in todo])  # type: ignore[union-attr]
            except Exception as exc:   # the whole engine call failed: every job in it fails alike
                fresh = [exc] * len(todo)
            for i, result in zip(todo, fresh):
                found[i] = result
                if isinstance(result, Transcript):
                    self.transcripts.put(keys[i], result)
        elapsed = _ms(t0)
        for job in jobs:
            job.timings["transcribe"] = round(elapsed / max(len(jobs), 1), 1)
        return found  # type: ignore[return-value]

    def _finish(self, job: Job, transcript: Transcript) -> dict[str, Any]:
        deadline.check()  # an engine that cannot be interrupted (PocketSphinx) returned too late
        loaded = job.loaded
        assert loaded is not None
        src = job.source.as_dict()
        audio_s = round(loaded.audio.duration_s, 3)
        # Out first: whatever the summarizer does next, the transcript is already stored.
        job.timings["total"] = _ms(job.t0)   # up to the transcript; the summary's `total` covers both
        self._emit("transcript", {"job_id": job.job_id, "source": src, "text": transcript.text,
                                  "language": transcript.language, "audio_s": audio_s, "speech_s": job.speech_s,
                                  "engine": transcript.engine, "timings_ms": dict(job.timings)})
        outcome = self.summary.for_job(self._engines, transcript.text, job.timings, job.job_id) if job.summarize \
            else SummaryOutcome(None)
        summary = outcome.summary
        job.timings["total"] = _ms(job.t0)
        if summary is not None and summary.text:
            body: dict[str, Any] = {"job_id": job.job_id, "source": src, "text": summary.text,
                                    "engine": summary.engine, "timings_ms": job.timings}
            if outcome.fallback:
                body.update(fallback=True, fallback_from=outcome.fallback_from, error=outcome.error)
            self._emit("summary", body)
        self.done += 1
        self.job_event(job.job_id, "done", src, audio_s=audio_s, timings_ms=job.timings)
        record = {"job_id": job.job_id, "content_hash": loaded.content_hash, "source": src, "audio_s": audio_s,
                  "speech_s": job.speech_s,
                  "transcript": transcript.text, "language": transcript.language,
                  "summary": summary.text if summary else None,
                  "engines": {"transcriber": transcript.engine, "summarizer": summary.engine if summary else None},
                  "timings_ms": job.timings}
        if outcome.fallback:
            record["summary_fallback"] = {"from": outcome.fallback_from, "error": outcome.error}
        return record

    def summarize_text(self, text: str, timings: dict[str, float]) -> Summary | None:
        """A `summarize` request (see SummaryStep.for_request)."""
        return self.summary.for_request(self._engines, text, timings)


def _raise(result: Transcript | Exception) -> Transcript:
    if isinstance(result, Exception):
        raise result
    return result


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)
