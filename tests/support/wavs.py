"""Small WAV files built in the test itself (independent of the agent's own encoder)."""

from __future__ import annotations

import io
import wave

import numpy as np


def tone_wav(seconds: float, freq: float = 440.0, rate: int = 16000, level: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * freq * t) * level * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()
