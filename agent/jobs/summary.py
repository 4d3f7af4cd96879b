"""The summary step of a job: the configured summarizer, bounded in time, or the extractive fallback.

The step as a whole (engine loading, the engine's own retries, a hung server) is bounded by
`summarizer.timeout_s`; past that, or on any error, the extractive summarizer answers instead (it
needs no model and cannot hang), the outcome says so (`fallback_from` plus the original error)
and the `on_summary` observer is told, which raises the `engine` alert. A `summarize` request
instead gets the configured engine's error: it asked for that engine, not a silent substitute.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from agent.engines.base import Summary
from agent.engines.deadline import bounded
from agent.engines.extractive import ExtractiveSummarizer
from agent.engines.runtime import Engines
from agent.errors import AgentError, EngineError
from agent.jobs.lru import LRUCache
from agent.jobs.stage import Stage
from agent.settings import SummarizerSettings

log = logging.getLogger(__name__)

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


class SummaryStep:
    """Summaries of texts, cached by (engine, text), at most `stage.limit` at once."""

    def __init__(self, *, cache_size: int, concurrency: int = 1,
                 settings: SummarizerSettings = SummarizerSettings(),
                 on_summary: SummaryObserver = lambda fallback: None) -> None:
        self.summaries = LRUCache(cache_size)
        self.stage = Stage(concurrency)
        self._settings = settings
        self._on_summary = on_summary

    def reconfigure(self, settings: SummarizerSettings) -> None:
        """Pushed on a config change. Jobs already inside the stage finish under the old bound."""
        self._settings = settings
        if settings.concurrency != self.stage.limit:
            self.stage = Stage(settings.concurrency)

    def for_request(self, engines: Engines, text: str, timings: dict[str, float]) -> Summary | None:
        """A `summarize` request: the configured engine only, still bounded by summarizer.timeout_s."""
        if not engines.summarizes or not text.strip():
            return None
        t0 = time.monotonic()
        summary = self._bounded(engines, text, self._settings.timeout_s)
        timings["summarize"] = _ms(t0)
        return summary

    def for_job(self, engines: Engines, text: str, timings: dict[str, float], job_id: str) -> SummaryOutcome:
        """The configured summarizer's answer, or the extractive fallback's on any failure."""
        if not engines.summarizes or not text.strip():
            return SummaryOutcome(None)
        t0 = time.monotonic()
        settings = self._settings
        try:
            summary = self._bounded(engines, text, settings.timeout_s)
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

    def _bounded(self, engines: Engines, text: str, timeout_s: float) -> Summary:
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
        timeout_s = bounded(timeout_s)  # a job's summary never outlasts jobs.timeout_s: then the fallback
        deadline = time.monotonic() + timeout_s
        stage = self.stage
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


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)
