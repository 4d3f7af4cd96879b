"""Jobs: audio -> transcript -> summary -> events, with their lifecycle on `event/job`.

The transcript is published the moment it exists, before any summary is attempted: a summarizer
that fails or hangs must never cost the user a good transcript. The summary step as a whole
(engine loading, the engine's own retries, a hung server) is bounded by `summarizer.timeout_s`;
past that, or on any error, the extractive summarizer answers instead (it needs no model and
cannot hang), the `summary` event says so (`fallback: true` plus the original error) and the
`on_summary` observer is told, which raises the `engine` alert.

Every source (inbox file, microphone segment, request) goes through here, so a transcript
looks the same whatever produced it. Each stage has its own bounded concurrency, so with two
job slots job N can be summarized while job N+1 is transcribed without two transcriptions
fighting over the cores. Identical audio (by content hash) and identical text reuse earlier
results from bounded LRU caches.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from agent.audio.clip import Audio

from agent.engines.base import Summary, Transcript
from agent.engines.extractive import ExtractiveSummarizer
from agent.engines.runtime import Engines
from agent.errors import AgentError, EngineError
from agent.jobs.lru import LRUCache
from agent.settings import SummarizerSettings

log = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]
#: Told after every summary attempt of a job: None when the configured summarizer answered,
#: else the fallback's details (`engine`, `error`, `job_id`). The app raises / clears the alert.
SummaryObserver = Callable[[dict[str, Any] | None], None]

#: Summarizers that run in the job's own thread: pure Python, no I/O, they cannot hang.
_INLINE_SUMMARIZERS = frozenset({"extractive", "none"})


@dataclass(frozen=True)
class SummaryOutcome:
    """What the summary step produced: the summary, and why it is not the configured engine's."""

    summary: Summary | None
    fallback_from: str | None = None          # the configured engine that failed
    error: dict[str, Any] | None = None       # its error (code, message)

    @property
    def fallback(self) -> bool:
        return self.fallback_from is not None


@dataclass(frozen=True)
class Source:
    kind: str                      # "inbox" | "mic" | "request"
    name: str
    segment_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.segment_id is None:
            d.pop("segment_id")
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


class Stage:
    """A bounded number of concurrent users of one engine (threads x jobs <= cores)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def __enter__(self) -> None:
        self._sem.acquire()

    def __exit__(self, *exc: object) -> None:
        self._sem.release()

    def acquire(self, timeout: float) -> bool:
        return self._sem.acquire(timeout=timeout)

    def release(self) -> None:
        self._sem.release()


class Pipeline:
    def __init__(self, engines: Callable[[], Engines], emit: Emit, *, cache_size: int,
                 transcribe_concurrency: int = 1, summarize_concurrency: int = 1,
                 speech_seconds: Callable[[Audio], float] = lambda audio: audio.duration_s,
                 summarizer_settings: Callable[[], SummarizerSettings] = SummarizerSettings,
                 on_summary: SummaryObserver = lambda fallback: None) -> None:
        self._engines = engines
        self._emit = emit
        self._summarizer_settings = summarizer_settings
        self._on_summary = on_summary
        self._speech_seconds = speech_seconds
        self.transcripts = LRUCache(cache_size)
        self.summaries = LRUCache(cache_size)
        self.transcribe_stage = Stage(transcribe_concurrency)
        self.summarize_stage = Stage(summarize_concurrency)
        self.done = 0
        self.failed = 0

    def set_concurrency(self, transcribe: int, summarize: int) -> None:
        """Jobs already inside a stage finish under the old bound; new ones use the new one."""
        if transcribe != self.transcribe_stage.limit:
            self.transcribe_stage = Stage(transcribe)
        if summarize != self.summarize_stage.limit:
            self.summarize_stage = Stage(summarize)

    def job_event(self, job_id: str, state: str, source: dict[str, Any], **extra: Any) -> None:
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
        t0 = time.monotonic()
        engines = self._engines()
        key = (engines.transcriber.name, loaded.content_hash)
        transcript = self.transcripts.get(key)
        if transcript is None:
            with self.transcribe_stage:
                transcript = engines.transcribe(loaded.audio)
            self.transcripts.put(key, transcript)
        job.timings["transcribe"] = _ms(t0)
        return transcript

    def _transcribe_many(self, jobs: list[Job]) -> list[Transcript | Exception]:
        engines = self._engines()
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
        loaded = job.loaded
        assert loaded is not None
        src = job.source.as_dict()
        audio_s = round(loaded.audio.duration_s, 3)
        # Out first: whatever the summarizer does next, the transcript is already stored.
        job.timings["total"] = _ms(job.t0)   # up to the transcript; the summary's `total` covers both
        self._emit("transcript", {"job_id": job.job_id, "source": src, "text": transcript.text,
                                  "language": transcript.language, "audio_s": audio_s, "speech_s": job.speech_s,
                                  "engine": transcript.engine, "timings_ms": dict(job.timings)})
        outcome = self._summary_outcome(transcript.text, job.timings, job.job_id) if job.summarize \
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
        """A `summarize` request: the configured engine only (the caller asked for it by name of
        the device's config, and gets its error rather than a silent substitute), still bounded
        by summarizer.timeout_s."""
        engines = self._engines()
        if not engines.summarizes or not text.strip():
            return None
        t0 = time.monotonic()
        summary = self._summarize_bounded(engines, text, self._summarizer_settings().timeout_s)
        timings["summarize"] = _ms(t0)
        return summary

    def _summary_outcome(self, text: str, timings: dict[str, float], job_id: str) -> SummaryOutcome:
        """The configured summarizer's answer, or the extractive fallback's on any failure."""
        engines = self._engines()
        if not engines.summarizes or not text.strip():
            return SummaryOutcome(None)
        t0 = time.monotonic()
        settings = self._summarizer_settings()
        try:
            summary = self._summarize_bounded(engines, text, settings.timeout_s)
        except Exception as exc:   # any failure of the summarizer: the job still succeeds
            error = exc.as_dict() if isinstance(exc, AgentError) else \
                {"code": "engine_error", "message": f"internal error: {type(exc).__name__}"}
            if not isinstance(exc, AgentError):
                log.exception("job %s: summarizer %s failed unexpectedly", job_id, engines.summarizer.name)
            log.warning("job %s: summarizer %s failed (%s: %s); using the extractive summary", job_id,
                        engines.summarizer.name, error.get("code"), error.get("message"))
            summary = ExtractiveSummarizer(settings).summarize(text)
            timings["summarize"] = _ms(t0)
            self._notify({"job_id": job_id, "engine": engines.summarizer.name, "fallback": summary.engine,
                          "error": error})
            return SummaryOutcome(summary, engines.summarizer.name, error)
        timings["summarize"] = _ms(t0)
        self._notify(None)
        return SummaryOutcome(summary)

    def _notify(self, fallback: dict[str, Any] | None) -> None:
        try:
            self._on_summary(fallback)
        except Exception:   # an observer must not fail the job
            log.exception("summary observer failed")

    def _summarize_bounded(self, engines: Engines, text: str, timeout_s: float) -> Summary:
        """The configured summarizer's answer within `timeout_s` in total, or EngineError.

        The total covers waiting for the stage, the engine still loading, and every retry the
        engine makes on its own (HTTP 429/5xx back-off, a llama server restarted mid-request).
        An engine that overruns keeps its thread (and its stage place) until its own per-request
        timeout ends it; the job does not wait for that.
        """
        key = (engines.summarizer.name, text)
        cached = self.summaries.get(key)
        if cached is not None:
            return cached
        deadline = time.monotonic() + timeout_s
        stage = self.summarize_stage
        if engines.summarizer.name in _INLINE_SUMMARIZERS:
            with stage:
                summary = engines.summarize(text)
            self.summaries.put(key, summary)
            return summary
        if not stage.acquire(timeout=timeout_s):
            raise EngineError(f"no summarizer free within summarizer.timeout_s ({timeout_s:g} s)",
                              code="engine_timeout")
        done = threading.Event()
        result: list[Summary | BaseException] = []

        def call() -> None:
            try:
                result.append(engines.summarize(text))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting job
                result.append(exc)
            finally:
                stage.release()
                done.set()

        threading.Thread(target=call, name="summarize", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise EngineError(f"summarizer {engines.summarizer.name} gave no summary within "
                              f"summarizer.timeout_s ({timeout_s:g} s)", code="engine_timeout")
        outcome = result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        self.summaries.put(key, outcome)
        return outcome


def _raise(result: Transcript | Exception) -> Transcript:
    if isinstance(result, Exception):
        raise result
    return result


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)
