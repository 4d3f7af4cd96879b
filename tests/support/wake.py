"""Audio for wake word accuracy: wake phrases in several espeak-ng voices, clean or in pink noise
at a given SNR, and a long stretch of audio that never says a wake phrase. Used by
tests/unit/test_wake_word_accuracy.py (a short slice, with thresholds) and bench/wake.py (the
full figures). Nothing is downloaded: espeak-ng, Debian's licence texts and the registry
recordings of tests/support/real_speech.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agent.settings import ListenSettings, WakeWordSettings
from tests.support.speech import SAMPLE_RATE, _to_int16, dbfs_to_amplitude, pink_noise, silence, utterance, white_noise

VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+m7", "en-gb-x-rp+f2")
PHRASES = {"okay_nabu": "okay nabu", "alexa": "alexa"}
ALL_MICRO = ("okay_nabu", "alexa", "hey_jarvis", "hey_mycroft")
LEAD_S, TRAIL_S = 1.0, 1.5
TEXT = Path("/usr/share/common-licenses/GPL-3")   # long plain English (Debian base-files)


@dataclass(frozen=True)
class Clip:
    label: str
    samples: np.ndarray
    phrase_end_s: float | None = None   # where the wake phrase ends (None: no wake phrase)


def rms_dbfs(samples: np.ndarray) -> float:
    x = samples.astype(np.float64)
    return 20 * np.log10(max(np.sqrt(np.mean(x * x)), 1e-9) / 32768)


def wake_clip(model: str, voice: str, snr_db: float | None = None, seed: int = 7) -> Clip:
    """1 s of silence, the wake phrase, 1.5 s of silence; with pink noise `snr_db` below the phrase's level."""
    phrase = utterance(PHRASES[model], voice)
    samples = np.concatenate([silence(LEAD_S), phrase, silence(TRAIL_S)])
    if snr_db is not None:
        noise = pink_noise(len(samples) / SAMPLE_RATE, rms_dbfs(phrase) - snr_db, seed=seed)
        samples = _to_int16(samples.astype(np.float64) + noise)
    label = f"{model}/{voice}" + ("" if snr_db is None else f" +pink {snr_db:g} dB SNR")
    return Clip(label, samples, LEAD_S + len(phrase) / SAMPLE_RATE)


def gate_settings(models: tuple[str, ...] | list[str], noise_suppression: int = 0) -> ListenSettings:
    return replace(ListenSettings(), mode="wake", noise_suppression=noise_suppression,
                   wake_word=WakeWordSettings(engine="micro", models=list(models)))


def detections(samples: np.ndarray, models: tuple[str, ...] | list[str], noise_suppression: int = 0,
               block: int = 480) -> list:
    """Every wake in the audio, through the listener's own gate (noise suppression, then the models),
    read in 30 ms blocks like the listener. After each wake the gate is put back to waiting."""
    from agent.sources.wake_gate import WakeGate

    gate = WakeGate(gate_settings(models, noise_suppression))
    found = []
    try:
        for i in range(0, len(samples), block):
            _, _, woke = gate.process(samples[i:i + block])
            if woke is not None:
                found.append(woke)
                gate.end_command()
    finally:
        gate.close()
    return found


def brown_noise(duration_s: float, level_dbfs: float, seed: int = 5) -> np.ndarray:
    """Integrated white noise (1/f^2), high-passed at ~20 Hz so it does not drift: traffic, fans."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal(int(round(duration_s * SAMPLE_RATE))))
    x -= np.convolve(x, np.ones(800) / 800, mode="same")
    x *= dbfs_to_amplitude(level_dbfs) / np.sqrt(np.mean(x * x))
    return _to_int16(x)


def sentences(limit_words: int | None = None) -> list[str]:
    """Sentences of the GPL-3 text (no wake phrase in it: checked), short enough for espeak-ng."""
    text = re.sub(r"\s+", " ", TEXT.read_text(encoding="utf-8"))
    parts = [p.strip() for p in re.split(r"(?<=[.;:!?])\s+", text) if len(p.split()) >= 3]
    out, words = [], 0
    for part in parts:
        chunk = " ".join(part.split()[:40])
        assert not re.search(r"\b(alexa|nabu|jarvis|mycroft)\b", chunk, re.I), chunk
        out.append(chunk)
        words += len(chunk.split())
        if limit_words is not None and words >= limit_words:
            break
    return out


def espeak_stream(seconds: float) -> Iterator[Clip]:
    """GPL-3 sentences, voices and speeds taking turns, 0.4 s apart, until `seconds` of audio."""
    total = 0.0
    for i, text in enumerate(sentences()):
        voice, speed = VOICES[i % len(VOICES)], (140, 160, 180)[i % 3]
        samples = np.concatenate([utterance(text, voice, speed), silence(0.4)])
        total += len(samples) / SAMPLE_RATE
        yield Clip(f"espeak {voice}", samples)
        if total >= seconds:
            return


def noise_clips(seconds_each: float) -> list[Clip]:
    levels = (-45.0, -30.0, -20.0)
    clips = [Clip(f"pink {lv:g} dBFS", pink_noise(seconds_each, lv, seed=11 + i)) for i, lv in enumerate(levels)]
    clips += [Clip(f"brown {lv:g} dBFS", brown_noise(seconds_each, lv, seed=21 + i)) for i, lv in enumerate(levels)]
    clips += [Clip(f"white {lv:g} dBFS", white_noise(seconds_each, lv, seed=31 + i)) for i, lv in enumerate(levels)]
    return clips


def real_clips() -> list[Clip]:
    """The registry recordings of real people (and the real noise sample), at 16 kHz."""
    from agent.audio.wav import decode_file
    from tests.support import real_speech

    paths = [(r.source, r.path) for r in real_speech.recordings(("command", "sentence", "digits", "sung"))]
    noise = real_speech.noise_wav()
    if noise is not None:
        paths.append(("alsa-utils noise", noise))
    return [Clip(f"real {source}: {path.name}", decode_file(path).samples) for source, path in paths]
