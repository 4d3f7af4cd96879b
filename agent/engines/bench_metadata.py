"""A MODEL-FREE stand-in transcriber, for benchmarks and tests only. It does not transcribe.

Why it exists: pipeline benchmarks (MQTT round trips, inbox throughput, outbox behaviour) must
measure the agent, not Whisper; and tests of the plumbing must not wait seconds per job. It
answers instantly with a description of the audio ("audio 1.23 s rms -20.1 dBFS"), which is
deterministic and still proves the right audio reached the engine. Never use it as a default: the
config accepts it only with VOICE_AGENT_TEST_ENGINES=1 (set by the test harness and bench/).
"""

from __future__ import annotations

import math

import numpy as np

from agent.audio.clip import Audio, SAMPLE_RATE

from agent.engines.base import Transcript
from agent.settings import TranscriberSettings


_BLOCK = 1 << 16  # samples per block of the RMS sum


def describe(samples: np.ndarray) -> str:
    """Duration and RMS level of int16 samples, e.g. "audio 1.23 s rms -20.1 dBFS"."""
    data = np.asarray(samples)
    duration = len(data) / SAMPLE_RATE
    if data.size == 0:
        return f"audio {duration:.2f} s rms -inf dBFS"
    scale = 32768.0 if data.dtype.kind in "iu" else 1.0
    # In blocks: a float64 copy of a long recording would cost 4x its int16 samples, and memory
    # tests that use this engine measure the agent, not it.
    energy = sum(float(np.square(data[i:i + _BLOCK].astype(np.float64) / scale).sum())
                 for i in range(0, data.size, _BLOCK))
    rms = math.sqrt(energy / data.size)
    level = 20.0 * math.log10(rms) if rms > 0 else float("-inf")
    return f"audio {duration:.2f} s rms {level:.1f} dBFS"


class BenchMetadataTranscriber:
    """Benchmark/test-only engine: returns audio metadata as the "transcript", never real text."""

    name = "bench_metadata"

    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings

    def load(self) -> None:
        """Nothing to load: that is the point of this engine."""

    def transcribe(self, audio: Audio) -> Transcript:
        return Transcript(text=describe(audio.samples), engine=self.name, language=self._settings.language)

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        return [self.transcribe(audio) for audio in audios]

    def close(self) -> None:
        pass
