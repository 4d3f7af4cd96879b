"""The wake service role: Home Assistant streams audio, the agent's wake word models answer.

    detect (names) -> audio-start -> audio-chunk ... -> audio-stop  =>  detection | not-detected

It shares the speech-to-text port: Home Assistant's wyoming integration makes one config entry
per host and port and gives it a speech-to-text entity when `info` lists `asr` and a wake word
entity when it lists `wake`, so one entry gives both. A connection that sends `detect` is a wake
stream; anything else goes to the speech-to-text session it wraps (agent/sources/wyoming_asr.py).

Each `detect` gets a fresh WakeWordDetector (agent/audio/wake_word.py) over the configured models
that `names` asks for (all of them when it names none), so a stream never inherits another's
state. Audio is processed as it arrives and nothing is kept, so an endless stream costs no memory;
the models take about 0.25 % of one core each (microWakeWord) and run in the loop, which keeps
answering pings between chunks. After a detection the rest of the stream is ignored until
audio-stop (Home Assistant closes the connection at the detection).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from agent.audio.source import TARGET_RATE
from agent.settings import WakeWordSettings, parse_wake_model

log = logging.getLogger(__name__)

STALL_S = 10.0   # a wake stream with no audio for this long stops holding the role


def wake_program(settings: WakeWordSettings, attribution: Any, name: str, version: str) -> Any:
    """The `wake` entry of `info`: one model per configured wake word."""
    from wyoming.info import WakeModel, WakeProgram

    models = []
    for name in settings.names:
        phrase = name.replace("_", " ")   # Home Assistant lists the model by its description
        models.append(WakeModel(name=name, attribution=attribution, installed=True, description=phrase,
                                version=None, languages=["en"], phrase=phrase))
    return WakeProgram(name=name, attribution=attribution, installed=True,
                       description=f"voice-agent wake word ({settings.engine})", version=version, models=models)


class WakeOrAsrSession:
    """One connection to the shared port: a wake stream after `detect`, else speech-to-text."""

    def __init__(self, conn: Any, *, asr: Any, wake: Callable[[], WakeWordSettings], info: Callable[[], Any]) -> None:
        self._conn, self._asr, self._wake = conn, asr, wake
        self.info = info
        self._detector: Any = None       # set between detect and audio-stop
        self._streaming = False
        self._detected = False
        self._last_chunk = 0.0

    @property
    def busy(self) -> bool:
        """A wake stream holds the role while its audio keeps coming (a client that stops sending
        lets the server's idle timeout close it); after its detection it no longer does."""
        streaming = (self._streaming and not self._detected
                     and time.monotonic() - self._last_chunk < STALL_S)
        return streaming or self._asr.busy

    def closed(self) -> None:
        self._stop()
        self._asr.closed()

    def _stop(self) -> None:
        if self._detector is not None:
            self._detector.close()
        self._detector, self._streaming, self._detected = None, False, False

    async def handle(self, event: Any) -> None:
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.error import Error
        from wyoming.wake import Detect, Detection, NotDetected

        if Detect.is_type(event.type):
            self._stop()
            error = self._start(Detect.from_event(event).names)
            if error is not None:
                await self._conn.send(Error(text=error, code="wake_word_error").event())
            return
        if self._detector is None:
            await self._asr.handle(event)
            return
        if AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            if (start.rate, start.width, start.channels) != (TARGET_RATE, 2, 1):
                self._stop()
                await self._conn.send(Error(text=f"wake detection needs {TARGET_RATE} Hz 16-bit mono audio, "
                                               f"not {start.rate}/{start.width * 8}/{start.channels}",
                                            code="bad_audio").event())
                return
            self._streaming, self._last_chunk = True, time.monotonic()
        elif AudioChunk.is_type(event.type) and self._streaming and not self._detected:
            payload = event.payload or b""
            self._last_chunk = time.monotonic()
            found = self._detector.process(np.frombuffer(payload[:len(payload) // 2 * 2], dtype="<i2"))
            if found is not None:
                self._detected = True
                log.info("wyoming wake: %s detected at %.2f s (p=%.2f)", found.model, found.at_s, found.probability)
                await self._conn.send(Detection(name=found.model, timestamp=int(found.at_s * 1000)).event())
        elif AudioStop.is_type(event.type):
            detected = self._detected
            self._stop()
            if not detected:
                await self._conn.send(NotDetected().event())

    def _start(self, names: list[str] | None) -> str | None:
        """A detector for the models `names` asks for; the error text when none can run."""
        from agent.audio.wake_word import WakeWordDetector, WakeWordError

        settings = self._wake()
        entries = list(settings.models)
        if not entries:
            return "no wake word is configured on this device (listen.wake_word.models)"
        if names:
            wanted = {str(n) for n in names}
            entries = [e for e in entries if (parse_wake_model(e) or ("",))[0] in wanted]
            if not entries:
                return "no such wake word model here: " + ", ".join(sorted(wanted))[:200]
        try:
            self._detector = WakeWordDetector(replace(settings, models=entries))
        except WakeWordError as exc:
            log.warning("wyoming wake: %s", exc)
            return str(exc)
        self._detected = False
        return None
