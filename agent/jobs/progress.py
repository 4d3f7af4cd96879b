"""Long jobs: which jobs are running, and `event/progress` while a transcriber works on one.

Why: a 20-minute recording showed `running` and then nothing for minutes, so nobody could tell a
busy agent from a stuck one. The transcribers that decode in steps (faster-whisper's segment
stream, the whisper.cpp program's printed segments) report `(fraction, text so far)` to a
reporter made here; at most one `event/progress` per job per `jobs.progress_interval_s` leaves
(0: none), and the retained `state` lists each running job with its last published fraction.

Progress events are ephemeral: they go to the broker at QoS 0 when connected and are never
stored in the durable outbox. Why: each one is worth nothing once the next one or the
transcript exists, while the outbox is bounded (`outbox.max_messages`, `outbox.max_bytes`) and
written to the SD card. During a broker outage a 20-minute job would store hundreds of stale
progress rows that crowd out and delay the transcripts and alerts the outbox exists for, and
cost an fsync every few seconds. A lost progress event costs nothing: the next one, or the
transcript, follows.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from agent.timestamps import utc_iso

log = logging.getLogger(__name__)

#: The longest `text` a progress event carries: the body stays small however long the recording.
TEXT_MAX_CHARS = 1000

#: Where progress events go: the ephemeral path (`EventSink.emit_ephemeral`), called with the body.
Publish = Callable[[dict[str, Any]], None]
#: What a transcriber calls as it goes: fraction of the audio done (0..1) and the text so far.
Report = Callable[[float, str], None]


def bounded_text(text: str, limit: int = TEXT_MAX_CHARS) -> tuple[str, bool]:
    """The text so far within `limit` characters, and whether it was cut.

    The end is kept (what the speaker is saying now is what a live view shows), cut at a word
    boundary when there is one, so the kept part is still words of the final transcript.
    """
    text = text.strip()
    if len(text) <= limit:
        return text, False
    tail = text[len(text) - limit:]
    space = tail.find(" ")
    if 0 <= space < len(tail) - 1:
        tail = tail[space + 1:]
    return tail, True


@dataclass
class _Running:
    job_id: str
    source: dict[str, Any]             # as in the job's `event/job` (kind, name, segment_id)
    started_at: str
    t0: float
    fraction: float | None = None      # the last one published
    sent_at: float | None = None       # monotonic time of the last published event


class JobProgress:
    """The running jobs (for `state`) and their rate-limited progress events.

    Thread-safe: reports come from a job's thread or from an engine's output-reading thread.
    """

    def __init__(self, publish: Publish, interval_s: float = 2.0, *, text_max_chars: int = TEXT_MAX_CHARS,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._publish = publish
        self.interval_s = interval_s
        self._text_max = text_max_chars
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._jobs: dict[str, _Running] = {}

    def set_interval(self, interval_s: float) -> None:
        """Pushed on a config change; 0 turns progress events off (running jobs stay in `state`)."""
        self.interval_s = interval_s

    # --- running jobs ------------------------------------------------------------------------

    def started(self, job_id: str, source: dict[str, Any]) -> None:
        with self._lock:
            self._jobs[job_id] = _Running(job_id, dict(source), utc_iso(self._wall()), self._clock())

    def ended(self, job_id: str) -> None:
        """Idempotent: a job may end by `done`, `failed` and the runner's own cleanup."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def running(self) -> list[dict[str, Any]]:
        """Each running job, oldest first: what `state` shows (`fraction` None until reported)."""
        now = self._clock()
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.t0)
            return [{"job_id": j.job_id, "source": dict(j.source), "started_at": j.started_at,
                     "elapsed_s": round(now - j.t0, 1), "fraction": j.fraction} for j in jobs]

    # --- progress events ---------------------------------------------------------------------

    def reporter(self, job_id: str) -> Report | None:
        """What the transcriber of `job_id` reports to; None when progress is off, so an engine
        does no progress work at all (whisper.cpp then runs exactly as without this feature)."""
        if self.interval_s <= 0:
            return None
        return lambda fraction, text: self.report(job_id, fraction, text)

    def report(self, job_id: str, fraction: float, text: str) -> bool:
        """Publish `(fraction, text)` for the job unless one left less than `interval_s` ago;
        returns whether it was published. Fractions never go back (clamped to 0..1, then to at
        least the last one published); a report for a job that is not running is dropped."""
        interval = self.interval_s
        if interval <= 0:
            return False
        now = self._clock()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (job.sent_at is not None and now - job.sent_at < interval):
                return False
            value = min(1.0, max(0.0, float(fraction), job.fraction or 0.0))
            job.fraction, job.sent_at = round(value, 3), now
            elapsed = round(now - job.t0, 1)
            kept, cut = bounded_text(text, self._text_max)
            body = {"job_id": job_id, "source": dict(job.source), "fraction": job.fraction, "text": kept,
                    "text_truncated": cut, "elapsed_s": elapsed}
        try:
            self._publish(body)
        except Exception:   # progress is a courtesy: it must never fail the job
            log.exception("job %s: publishing progress failed", job_id)
        return True
