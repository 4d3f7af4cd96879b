"""The speech-to-text role: Home Assistant streams audio, the agent's transcriber answers.

    transcribe (language) -> audio-start -> audio-chunk ... -> audio-stop  =>  transcript | error

The audio is kept in memory under the inbox's own bounds (`inbox.max_bytes`; more closes the
connection), wrapped as a WAV and handed to the same admission and runner as every other job
(source kind "wyoming"), so it takes a job slot, publishes its `event/job` and `event/transcript`
like a request, and a full slot or critical memory is answered at once with a Wyoming `error`
whose code is the agent's own refusal code (`busy`, `memory_pressure`, `stopping`). The job runs
in a worker thread: the connection's loop keeps answering pings meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import logging
import wave
from typing import Any, Callable

from agent.errors import AgentError
from agent.jobs.admission import Admission, Refusal
from agent.jobs.loading import load_bytes
from agent.jobs.pipeline import Job, Source
from agent.jobs.runner import Runner
from agent.jobs.slot import new_job_id
from agent.settings import InboxSettings
from agent.sources.wyoming_frames import FrameError
from agent.sources.wyoming_server import in_thread

log = logging.getLogger(__name__)


def pcm_to_wav(pcm: bytes, rate: int, width: int, channels: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


class AsrSession:
    """One Home Assistant connection to the speech-to-text role."""

    def __init__(self, conn: Any, *, admission: Admission, runner: Runner, inbox: Callable[[], InboxSettings],
                 info: Callable[[], Any]) -> None:
        self._conn = conn
        self._admission, self._runner, self._inbox = admission, runner, inbox
        self.info = info
        self._format: tuple[int, int, int] | None = None
        self._pcm = bytearray()
        self._job: asyncio.Task | None = None

    @property
    def busy(self) -> bool:
        """Audio is streaming or being transcribed."""
        return self._format is not None or (self._job is not None and not self._job.done())

    def closed(self) -> None:
        """The connection ended; a job already running finishes and releases its slot (its answer is lost)."""
        self._pcm = bytearray()

    async def handle(self, event: Any) -> None:
        from wyoming.audio import AudioChunk, AudioStart, AudioStop

        if AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            if not (1 <= start.width <= 4 and 1 <= start.channels <= 8 and 1000 <= start.rate <= 192_000):
                raise FrameError(f"audio-start with an unusable format {start.rate}/{start.width}/{start.channels}")
            self._format = (start.rate, start.width, start.channels)
            self._pcm = bytearray()
        elif AudioChunk.is_type(event.type) and self._format is not None:
            payload = event.payload or b""
            if len(self._pcm) + len(payload) > self._inbox().max_bytes:
                raise FrameError(f"audio over inbox.max_bytes ({self._inbox().max_bytes} bytes)")
            self._pcm += payload
        elif AudioStop.is_type(event.type) and self._format is not None:
            wav = pcm_to_wav(bytes(self._pcm), *self._format)
            self._format, self._pcm = None, bytearray()
            self._job = asyncio.get_running_loop().create_task(self._transcribe(wav))
        # `transcribe` names the language: the transcriber's own setting is what it speaks

    async def _transcribe(self, wav: bytes) -> None:
        from wyoming.asr import Transcript
        from wyoming.error import Error

        ticket = self._admission.try_admit(request=True)
        if isinstance(ticket, Refusal):
            log.info("wyoming stt: refused (%s)", ticket.code)
            await self._conn.send(Error(text=ticket.message, code=ticket.code).event())
            return
        inbox = self._inbox()
        job = Job(new_job_id(), Source("wyoming", "stt"), lambda: load_bytes(wav, inbox), summarize=False)
        try:
            [result] = await in_thread(lambda: self._runner.run(ticket, [job], catch_all=True), "wyoming-stt-job")
        except Exception:   # the runner gives every job error back as a result; anything else is a bug
            log.exception("wyoming stt: job %s failed", job.job_id)
            result = AgentError("internal error; see the agent's log")
        if isinstance(result, AgentError):
            await self._conn.send(Error(text=result.message, code=result.code).event())
        else:
            await self._conn.send(Transcript(text=result["transcript"]).event())
