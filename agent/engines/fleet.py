"""`transcriber.engine: fleet`: a device too small to transcribe well hands each job's audio to
the fleet's workers and publishes their transcript as its own.

The audio goes through the existing shared work queue (`<prefix>/jobs/transcribe`, taken by
agents with `fleet.worker: true`; agent/sources/fleet.py) with a reply topic of this device's
own (agent/mqtt/offload.py sends and waits; it is pushed in as `offload`, as engines know
nothing of MQTT). The transcript's engine names the worker: `fleet:<worker device id>/<its
engine>`. When no worker answers within `transcriber.fleet.timeout_s` (none subscribed, all
gone, the broker away) the local `transcriber.fleet.fallback` engine transcribes instead; with
none the job fails `engine_unavailable` (`unanswered`), which keeps an inbox file queued until a
worker answers (agent/jobs/retry.py: these waits count against no bound). A worker that says the audio itself is bad fails the job as bad audio.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable

from agent.audio.clip import Audio
from agent.engines.base import Transcript, transcribe_each
from agent.errors import AudioError, EngineError
from agent.settings import TranscriberSettings

log = logging.getLogger(__name__)

#: Sends WAV bytes to the workers and returns the worker's `ok` answer (text, language,
#: engines, device_id); raises EngineError when none comes in time, AudioError for bad audio.
Offload = Callable[[bytes, float], dict[str, Any]]

#: Worker error codes that are the audio's fault: the job fails here too, no fallback.
AUDIO_CODES = frozenset({"corrupt", "empty", "unsupported_format", "too_long", "too_large"})


class FleetTranscriber:
    name = "fleet"

    def __init__(self, settings: TranscriberSettings, offload: Offload | None = None) -> None:
        from agent.engines import make_transcriber   # the registry imports this module lazily

        self._settings = settings
        self._offload = offload
        fallback = settings.fleet.fallback
        self._fallback = make_transcriber(replace(settings, engine=fallback)) if fallback else None

    def load(self) -> None:
        """Only the fallback has something to load: it must be ready the moment no worker answers."""
        if self._offload is None:
            raise EngineError("fleet offload has no broker link in this process", code="engine_unavailable")
        if self._fallback is not None:
            self._fallback.load()

    def transcribe(self, audio: Audio) -> Transcript:
        from agent.audio.wav import encode_wav

        assert self._offload is not None
        try:
            answer = self._offload(encode_wav(audio.samples), self._settings.fleet.timeout_s)
        except EngineError as exc:
            if exc.details.get("worker_code") in AUDIO_CODES:
                raise AudioError(exc.message, code=exc.details["worker_code"]) from exc
            if self._fallback is None:
                raise EngineError(f"no fleet worker transcribed it ({exc.message}) and "
                                  "transcriber.fleet.fallback is not set", code="engine_unavailable",
                                  unanswered=True) from exc
            log.warning("fleet: %s; transcribing with the fallback %s", exc.message, self._fallback.name)
            return self._fallback.transcribe(audio)
        worker = answer.get("device_id") or "?"
        engine = (answer.get("engines") or {}).get("transcriber") or "?"
        return Transcript(text=answer.get("text") or "", engine=f"fleet:{worker}/{engine}",
                          language=answer.get("language"))

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        return transcribe_each(self.transcribe, audios)

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
