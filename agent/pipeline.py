"""One job: audio -> transcript -> summary -> events, with its lifecycle on `event/job`.

Every source (inbox file, microphone segment, request) goes through here, so a transcript
looks the same whatever produced it. Identical audio (by content hash) and identical text reuse
earlier results from bounded LRU caches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from agent.engines.base import Audio, Summary, Transcript
from agent.engines.runtime import Engines
from agent.errors import AgentError
from agent.lru import LRUCache

log = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]


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


class Pipeline:
    def __init__(self, engines: Callable[[], Engines], emit: Emit, *, cache_size: int) -> None:
        self._engines = engines
        self._emit = emit
        self.transcripts = LRUCache(cache_size)
        self.summaries = LRUCache(cache_size)
        self.done = 0
        self.failed = 0

    def job_event(self, job_id: str, state: str, source: dict[str, Any], **extra: Any) -> None:
        self._emit("job", {"job_id": job_id, "state": state, "source": source, **extra})

    def run(self, job_id: str, source: Source, load: Callable[[], Loaded], *,
            summarize: bool = True) -> dict[str, Any]:
        """Run one job to the end; returns its record. Raises AgentError after `failed` is published."""
        src = source.as_dict()
        self.job_event(job_id, "running", src)
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        try:
            loaded = load()
            timings["decode"] = _ms(t0)
            transcript = self._transcribe(loaded, timings)
            summary = self._summarize(transcript.text, timings) if summarize else None
        except AgentError as exc:
            self.failed += 1
            self.job_event(job_id, "failed", src, error=exc.as_dict())
            raise
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job_id)
            self.failed += 1
            err = AgentError(f"internal error: {type(exc).__name__}")
            self.job_event(job_id, "failed", src, error=err.as_dict())
            raise err from exc
        timings["total"] = _ms(t0)
        audio_s = round(loaded.audio.duration_s, 3)
        self._emit("transcript", {"job_id": job_id, "source": src, "text": transcript.text,
                                  "language": transcript.language, "audio_s": audio_s,
                                  "engine": transcript.engine, "timings_ms": timings})
        if summary is not None and summary.text:
            self._emit("summary", {"job_id": job_id, "source": src, "text": summary.text,
                                   "engine": summary.engine, "timings_ms": timings})
        self.done += 1
        self.job_event(job_id, "done", src, audio_s=audio_s, timings_ms=timings)
        return {"job_id": job_id, "content_hash": loaded.content_hash, "source": src, "audio_s": audio_s,
                "transcript": transcript.text, "language": transcript.language,
                "summary": summary.text if summary else None,
                "engines": {"transcriber": transcript.engine, "summarizer": summary.engine if summary else None},
                "timings_ms": timings}

    def _transcribe(self, loaded: Loaded, timings: dict[str, float]) -> Transcript:
        t0 = time.monotonic()
        engines = self._engines()
        key = (engines.transcriber.name, loaded.content_hash)
        transcript = self.transcripts.get(key)
        if transcript is None:
            transcript = engines.transcribe(loaded.audio)
            self.transcripts.put(key, transcript)
        timings["transcribe"] = _ms(t0)
        return transcript

    def summarize_text(self, text: str, timings: dict[str, float]) -> Summary | None:
        return self._summarize(text, timings)

    def _summarize(self, text: str, timings: dict[str, float]) -> Summary | None:
        engines = self._engines()
        if not engines.summarizes or not text.strip():
            return None
        t0 = time.monotonic()
        key = (engines.summarizer.name, text)
        summary = self.summaries.get(key)
        if summary is None:
            summary = engines.summarize(text)
            self.summaries.put(key, summary)
        timings["summarize"] = _ms(t0)
        return summary


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)
