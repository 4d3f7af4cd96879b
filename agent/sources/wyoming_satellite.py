"""The satellite role: the device's utterances become Home Assistant Assist pipeline runs.

Home Assistant connects, asks `describe`, and sends `run-satellite` when it is ready. From then on
each utterance the listener cuts (VAD start to VAD end, continuous mode) is sent as

    run-pipeline (asr -> tts, or asr -> handle without an output device) -> audio-start -> audio-chunk ... -> audio-stop

instead of being spooled for the local transcriber. What Home Assistant sends back is published
as `event/assist` on MQTT (transcript, answer, error); its spoken answer (TTS) is played on
`wyoming.output_device` and skipped quietly when there is none (then the pipeline is not asked for
TTS at all, and Home Assistant sends no answer text). Utterances while Home Assistant is away, or
paused the satellite, or one is still being sent, go to the spool as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from agent.sources.wyoming_frames import FrameError
from agent.sources.wyoming_server import in_thread

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 1600          # 100 ms at 16 kHz
MAX_TTS_BYTES = 8 * 1024 * 1024   # about three minutes of 22 kHz speech


class SatelliteSession:
    def __init__(self, conn: Any, *, emit: Callable[[str, dict], None], info: Callable[[], Any],
                 output_device: str | None) -> None:
        self._conn = conn
        self._emit = emit
        self.info = info
        self._output_device = output_device
        self.running = False          # Home Assistant sent run-satellite (and no pause since)
        self._sending = False
        self._tts: tuple[int, int, int] | None = None
        self._tts_pcm = bytearray()

    @property
    def busy(self) -> bool:
        """Never: a newer Home Assistant connection always takes the satellite over."""
        return False

    def closed(self) -> None:
        self.running = False

    @property
    def ready(self) -> bool:
        return self.running and not self._sending

    async def stream(self, pcm: bytes) -> None:
        """One utterance (16 kHz mono int16) as a pipeline run."""
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.pipeline import PipelineStage, RunPipeline

        end = PipelineStage.TTS if self._output_device else PipelineStage.HANDLE
        self._sending = True
        try:
            ok = await self._conn.send(RunPipeline(start_stage=PipelineStage.ASR, end_stage=end).event())
            ok = ok and await self._conn.send(AudioStart(rate=16000, width=2, channels=1).event())
            step = CHUNK_SAMPLES * 2
            for i in range(0, len(pcm), step):
                if not ok:
                    break
                ok = await self._conn.send(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i:i + step],
                                                      timestamp=i // 32).event())
            ok = ok and await self._conn.send(AudioStop(timestamp=len(pcm) // 32).event())
        finally:
            self._sending = False
        self._emit("assist", {"event": "run_pipeline", "end_stage": end.value, "audio_s": round(len(pcm) / 32000, 3),
                              "sent": ok})

    async def handle(self, event: Any) -> None:
        from wyoming.asr import Transcript
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.error import Error
        from wyoming.satellite import PauseSatellite, RunSatellite
        from wyoming.tts import Synthesize

        if RunSatellite.is_type(event.type):
            self.running = True
            log.info("wyoming satellite: Home Assistant (%s) is ready for pipelines", self._conn.peer)
        elif PauseSatellite.is_type(event.type):
            self.running = False
        elif Transcript.is_type(event.type):
            self._emit("assist", {"event": "transcript", "text": str(Transcript.from_event(event).text)[:10_000]})
        elif Synthesize.is_type(event.type):
            self._emit("assist", {"event": "answer", "text": str(Synthesize.from_event(event).text)[:10_000]})
        elif Error.is_type(event.type):
            err = Error.from_event(event)
            self._emit("assist", {"event": "error", "code": str(err.code)[:200], "message": str(err.text)[:1000]})
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            if not (1 <= start.width <= 4 and 1 <= start.channels <= 8 and 1000 <= start.rate <= 192_000):
                raise FrameError(f"audio-start with an unusable format {start.rate}/{start.width}/{start.channels}")
            self._tts, self._tts_pcm = (start.rate, start.width, start.channels), bytearray()
        elif AudioChunk.is_type(event.type) and self._tts is not None:
            if len(self._tts_pcm) + len(event.payload or b"") > MAX_TTS_BYTES:
                raise FrameError(f"spoken answer over {MAX_TTS_BYTES} bytes")
            if self._output_device:
                self._tts_pcm += event.payload or b""
        elif AudioStop.is_type(event.type) and self._tts is not None:
            fmt, pcm, self._tts, self._tts_pcm = self._tts, bytes(self._tts_pcm), None, bytearray()
            asyncio.get_running_loop().create_task(self._play(fmt, pcm))
        else:
            log.debug("wyoming satellite: %s not used", event.type)

    async def _play(self, fmt: tuple[int, int, int], pcm: bytes) -> None:
        """Play the spoken answer (in a worker thread), then tell Home Assistant it was played."""
        from wyoming.snd import Played

        played = False
        if self._output_device and pcm:
            try:
                await in_thread(lambda: play_pcm(self._output_device, fmt, pcm), "wyoming-play")
                played = True
            except Exception as exc:   # a missing or busy sound card must not end the satellite
                log.warning("wyoming satellite: cannot play the answer on %s: %s", self._output_device, exc)
        self._emit("assist", {"event": "tts", "played": played, "audio_s": round(len(pcm) / (fmt[0] * fmt[1] * fmt[2]), 3)
                              if played else None})
        await self._conn.send(Played().event())


def play_pcm(device: str, fmt: tuple[int, int, int], pcm: bytes) -> None:
    """Blocking playback through PyAudio (the `mic` extra); `device` is a name fragment or an index."""
    import pyaudio

    rate, width, channels = fmt
    pa = pyaudio.PyAudio()
    try:
        index = int(device) if device.isdigit() else next(
            (i for i in range(pa.get_device_count())
             if device.lower() in str(pa.get_device_info_by_index(i).get("name", "")).lower()
             and pa.get_device_info_by_index(i).get("maxOutputChannels", 0) > 0), None)
        if index is None:
            raise OSError(f"no output device named like {device!r}")
        stream = pa.open(format=pa.get_format_from_width(width), channels=channels, rate=rate, output=True,
                         output_device_index=index)
        try:
            stream.write(pcm)
        finally:
            stream.close()
    finally:
        pa.terminate()
