"""Test audio with known speech boundaries: espeak-ng utterances, silences and noise.

Why: VAD tests need real speech (webrtcvad is tuned to it; synthetic tones would prove
nothing) and a ground truth to compare against. espeak-ng pads its output with silence of its
own, so each utterance is trimmed with an amplitude threshold and the truth is measured from the
trimmed audio where it is placed, not guessed from durations. sox resamples espeak's 22.05 kHz
to the 16 kHz mono int16 the agent works with. Everything is deterministic (fixed noise seeds).
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
TRIM_THRESHOLD_DBFS = -40.0

UTTERANCES = (
    "Turn on the kitchen lights please",
    "What is the weather like tomorrow morning",
    "Set a timer for ten minutes",
)
LONG_SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank",
    "Please remind me to call the plumber about the leaking kitchen tap",
    "Every morning the old lighthouse keeper walks along the rocky shore",
)


@dataclass(frozen=True)
class SpeechAudio:
    """int16 16 kHz mono samples and the true (start_s, end_s) of each utterance in them."""

    samples: np.ndarray
    truth: list[tuple[float, float]]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def raw_bytes(self) -> bytes:
        """S16_LE bytes, the format of `arecord -f S16_LE` and of the ALSA file plugin."""
        return self.samples.astype("<i2").tobytes()


def dbfs_to_amplitude(level_dbfs: float) -> float:
    return 32768.0 * 10.0 ** (level_dbfs / 20.0)


def trim(samples: np.ndarray, threshold_dbfs: float = TRIM_THRESHOLD_DBFS) -> np.ndarray:
    """Cut leading and trailing samples whose magnitude stays below the threshold."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > dbfs_to_amplitude(threshold_dbfs))
    if len(loud) == 0:
        return samples[:0].copy()
    return samples[loud[0]:loud[-1] + 1].copy()


@functools.lru_cache(maxsize=64)
def _espeak_cached(text: str, voice: str, speed: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="va-espeak-") as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text],
                       check=True, capture_output=True, timeout=60)
        raw = subprocess.run(
            ["sox", str(wav), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
             "-t", "raw", "-"], check=True, capture_output=True, timeout=60).stdout
    return trim(np.frombuffer(raw, dtype="<i2").astype(np.int16)).tobytes()


def utterance(text: str, voice: str = "en", speed: int = 160) -> np.ndarray:
    """One spoken utterance, 16 kHz int16, with espeak's own silence trimmed off."""
    return np.frombuffer(_espeak_cached(text, voice, speed), dtype=np.int16).copy()


def silence(duration_s: float) -> np.ndarray:
    return np.zeros(int(round(duration_s * SAMPLE_RATE)), dtype=np.int16)


def white_noise(duration_s: float, level_dbfs: float, seed: int = 1) -> np.ndarray:
    """Gaussian white noise with the given RMS level."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(round(duration_s * SAMPLE_RATE))) * dbfs_to_amplitude(level_dbfs)
    return _to_int16(x)


def pink_noise(duration_s: float, level_dbfs: float, seed: int = 2) -> np.ndarray:
    """1/f noise (spectrum shaped from 20 Hz up) with the given RMS level: rumble-heavy like a room."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * SAMPLE_RATE))
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    x = np.fft.irfft(spectrum, n)
    x *= dbfs_to_amplitude(level_dbfs) / np.sqrt(np.mean(x * x))
    return _to_int16(x)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def mix_noise(samples: np.ndarray, level_dbfs: float | None, seed: int = 3) -> np.ndarray:
    """Add white noise at `level_dbfs` (None: leave the samples clean)."""
    if level_dbfs is None:
        return samples.copy()
    noise = white_noise(len(samples) / SAMPLE_RATE, level_dbfs, seed)
    return _to_int16(samples.astype(np.float64) + noise)


def build_speech(
    texts: tuple[str, ...] = UTTERANCES,
    gap_s: float = 1.5,
    lead_s: float = 1.0,
    trail_s: float = 1.5,
    noise_dbfs: float | None = -60.0,
) -> SpeechAudio:
    """Utterances separated by `gap_s` of silence, with the true boundaries of each.

    `gap_s=0` concatenates them into one long stretch of speech (truth: one span per text).
    """
    parts = [silence(lead_s)]
    truth: list[tuple[float, float]] = []
    offset = len(parts[0])
    for index, text in enumerate(texts):
        if index:
            parts.append(silence(gap_s))
            offset += len(parts[-1])
        speech = utterance(text)
        parts.append(speech)
        truth.append((offset / SAMPLE_RATE, (offset + len(speech)) / SAMPLE_RATE))
        offset += len(speech)
    parts.append(silence(trail_s))
    return SpeechAudio(mix_noise(np.concatenate(parts), noise_dbfs), truth)


def write_raw(path: Path, samples: np.ndarray) -> Path:
    """Write S16_LE raw PCM (the ALSA file plugin's and arecord's format)."""
    Path(path).write_bytes(samples.astype("<i2").tobytes())
    return Path(path)
