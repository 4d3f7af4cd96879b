"""Audio for engine tests: a WAV read the way the agent reads it, and the share of expected words heard."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np

from agent.audio.clip import Audio


def read_audio(path: Path, *, keep_path: bool = True) -> Audio:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    return Audio(samples=samples, path=path if keep_path else None)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def word_recall(expected: str, got: str) -> float:
    """Share of the expected words that appear in the transcript."""
    want, have = words(expected), set(words(got))
    return sum(w in have for w in want) / len(want)
