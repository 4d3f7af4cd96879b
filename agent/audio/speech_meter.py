"""How much of a job's audio is speech, by the same VAD as live listening (`speech_s` of a transcript)."""

from __future__ import annotations

from typing import Any

from agent.audio.vad_cache import VadCache
from agent.settings import VADSettings


class SpeechMeter:
    """Seconds of speech in a job's audio, by the same VAD as live listening; identical audio is
    answered from the VAD cache (keyed by a hash of the whole buffer)."""

    def __init__(self, vad: VADSettings, cache: VadCache) -> None:
        self._vad = vad
        self._cache = cache

    def reconfigure(self, vad: VADSettings) -> None:
        self._vad = vad

    def seconds(self, audio: Any) -> float:
        from agent.audio.vad import FrameClassifier  # numpy + webrtcvad: loaded with the first audio

        v = self._vad
        classifier = FrameClassifier(v.aggressiveness, v.frame_ms, v.energy_margin_db, cache=self._cache)
        return sum(classifier.classify_buffer(audio.samples)) * v.frame_ms / 1000
