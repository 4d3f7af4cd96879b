"""Noise suppression and automatic gain on the live stream, WebRTC's audio processing (PyPI
`webrtc-noise-gain`, what wyoming-satellite uses) on whole 10 ms frames of 16 kHz int16.

Two separate processors, because they sit at two places in the flow (agent/sources/wake_gate.py):
noise suppression before the wake word model and the VAD, automatic gain only after the wake word
model. Gain raises the noise floor between words, and upstream projects (wyoming-satellite,
linux-voice-assistant) keep it away from microWakeWord because it hurts detection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.audio.source import CaptureError

FRAME_SAMPLES = 160   # 10 ms at 16 kHz: the only size the processor takes
FRAME_BYTES = FRAME_SAMPLES * 2


def _audio_processor(auto_gain: int, noise_suppression: int) -> Any:
    try:
        from webrtc_noise_gain import AudioProcessor
    except ImportError as exc:
        raise CaptureError("listen.noise_suppression / listen.auto_gain need the Python package "
                           "webrtc-noise-gain: pip install 'voice-agent[noise]'") from exc
    return AudioProcessor(auto_gain, noise_suppression)


class WebRtcFilter:
    """One WebRTC processor over a stream of any block size; a partial 10 ms frame is held back
    until the next block completes it (at most 10 ms of delay)."""

    def __init__(self, *, noise_suppression: int = 0, auto_gain: int = 0) -> None:
        self._proc = _audio_processor(auto_gain, noise_suppression)
        self._held = b""

    def process(self, samples: np.ndarray) -> np.ndarray:
        data = self._held + np.ascontiguousarray(samples, dtype=np.int16).tobytes()
        whole = len(data) - len(data) % FRAME_BYTES
        process = self._proc.Process10ms
        out = b"".join(process(data[i:i + FRAME_BYTES]).audio for i in range(0, whole, FRAME_BYTES))
        self._held = data[whole:]
        return np.frombuffer(out, dtype=np.int16)


def noise_filter(level: int) -> WebRtcFilter | None:
    """The suppressor that runs before the wake word and the VAD, or None when off (level 0)."""
    return WebRtcFilter(noise_suppression=level) if level > 0 else None


def gain_filter(auto_gain: int) -> WebRtcFilter | None:
    """The automatic gain that runs after the wake word model, or None when off (0)."""
    return WebRtcFilter(auto_gain=auto_gain) if auto_gain > 0 else None
