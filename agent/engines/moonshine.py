"""Moonshine Tiny (English) in the agent's own process: free speech on a Pi Zero 2W.

Why this engine: PocketSphinx gets well under half the words of free speech, and Whisper pays for
a 30 s encoder window on every clip. Moonshine's encoder scales with the clip's length, and the
Tiny model is 43 MB of int8 ONNX Runtime (`.ort`) files. Only PyPI's `moonshine-voice==0.1.0`
ships those weights inside its wheel (x86_64 and aarch64); later versions download them at run
time, so the extra pins 0.1.0 and this module only ever reads the wheel's own folder (or a
folder the config names): nothing is downloaded, ever (a test runs it with the network blocked).

How it is driven:
- `moonshine_voice` is imported in `load()` only (its ONNX Runtime is 60 MB of libraries).
- The library's Transcriber defaults to the Base architecture: the Tiny one is passed.
- Its built-in Silero VAD would cut a clip into lines and, on short commands, adds stray words
  ("You", "I"); the agent's clips are already cut to speech, so it is switched off
  (`vad_threshold` 0: every window is speech) and the clip goes in whole. Long inbox files are
  cut here instead, at their quietest moments, into pieces the model handles well.
- The agent's own VAD runs first: a clip in which it finds (almost) no speech gives no words,
  without the model guessing words into noise. Then tags and spelled sounds go
  (agent/engines/non_speech.py), and a lone word from a long stretch of sound goes too: on a
  foghorn, house music and an evil laugh (1.6-2.4 s of what the VAD calls voiced) Tiny wrote
  "You", "You", "What?", while a person's one-word command is well under LONE_WORD_MAX_S voiced.
- Audio goes to the C library as a pointer into the numpy buffer: the wheel's Python wrapper
  would first build a Python list of every sample (hundreds of MB for a long file).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio.clip import SAMPLE_RATE, Audio
from agent.engines.base import Transcript, transcribe_each
from agent.engines.non_speech import spoken
from agent.errors import EngineError
from agent.settings import TranscriberSettings

log = logging.getLogger(__name__)

#: The model folder inside the moonshine-voice 0.1.0 wheel (Tiny, English).
WHEEL_MODEL = "tiny-en"
MODEL_FILES = ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")
#: Longest piece handed to the model at once. Moonshine was trained on utterances of up to about
#: 30 s; shorter pieces keep its decoder from running on (and its memory small).
MAX_PIECE_S = 20.0
#: Where a long file is cut: the quietest 30 ms frame in the last third of each piece.
FRAME_S = 0.03
#: The agent's VAD must find at least this much speech, else the clip gives no words.
MIN_SPEECH_S = 0.15
#: A transcript of one word from more voiced sound than this is the model guessing (see above).
LONE_WORD_MAX_S = 1.2
#: Options of the C library: its VAD off (every window counts as speech, one line per piece, never
#: cut inside a piece), and a cap on tokens per second that stops a runaway decoder.
LIBRARY_OPTIONS = {"vad_threshold": "0", "vad_max_segment_duration": str(MAX_PIECE_S + 10),
                   "max_tokens_per_second": "6.5"}


def model_folder(configured: str | None) -> Path:
    """The configured folder, or the Tiny English model inside the installed wheel."""
    if configured:
        return Path(configured)
    from moonshine_voice import get_model_path   # the wheel's own assets folder; reads nothing
    return Path(get_model_path(WHEEL_MODEL))


def pieces(samples: np.ndarray, max_s: float = MAX_PIECE_S) -> list[np.ndarray]:
    """The audio in pieces of at most `max_s`, each cut at the quietest frame of its last third
    (a pause between words, in speech), so no word is split at a fixed point."""
    limit = int(max_s * SAMPLE_RATE)
    frame = int(FRAME_S * SAMPLE_RATE)
    out: list[np.ndarray] = []
    start = 0
    while len(samples) - start > limit:
        window = samples[start + limit * 2 // 3: start + limit].astype(np.float32)
        frames = len(window) // frame
        energy = np.square(window[:frames * frame]).reshape(frames, frame).sum(axis=1)
        cut = start + limit * 2 // 3 + int(np.argmin(energy)) * frame + frame // 2
        out.append(samples[start:cut])
        start = cut
    out.append(samples[start:])
    return out


def speech_seconds(samples: np.ndarray) -> float:
    """Seconds the agent's VAD (webrtcvad gated by level above the noise floor) calls speech."""
    from agent.audio.vad import FrameClassifier

    classifier = FrameClassifier(frame_ms=int(FRAME_S * 1000))
    return sum(classifier.classify_buffer(samples)) * FRAME_S


class MoonshineTranscriber:
    """Transcriber backed by moonshine-voice's C library with the Tiny English model."""

    name = "moonshine"

    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._model: Any = None
        # One decoder state per model: calls are serialized (each already uses the cores it gets).
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model from the wheel (or the configured folder) and decode 1 s of silence."""
        if self._model is not None:
            return
        try:
            from moonshine_voice import ModelArch, Transcriber
        except ImportError as exc:
            raise EngineError("moonshine-voice is not installed: install voice-agent[moonshine]",
                              code="engine_unavailable") from exc
        folder = model_folder(self._settings.moonshine.model)
        missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
        if missing:
            raise EngineError(f"Moonshine model folder {folder} lacks {', '.join(missing)} (moonshine-voice "
                              "0.1.0 is the only version whose wheel carries the weights)",
                              code="engine_unavailable")
        started = time.monotonic()
        try:
            self._model = Transcriber(str(folder), ModelArch.TINY, options=LIBRARY_OPTIONS)
        except Exception as exc:  # noqa: BLE001 - the library raises its own error types
            raise EngineError(f"cannot load the Moonshine model in {folder}: {exc}",
                              code="engine_unavailable") from exc
        self._decode(np.zeros(SAMPLE_RATE, dtype=np.float32))
        log.info("Moonshine Tiny loaded from %s and warmed up in %.2f s", folder, time.monotonic() - started)

    def _decode(self, piece: np.ndarray) -> str:
        """One piece through the C library, straight from the float32 buffer (no Python list)."""
        model = self._model
        data = np.ascontiguousarray(piece, dtype=np.float32)
        from moonshine_voice.errors import check_error
        from moonshine_voice.moonshine_api import TranscriptC

        out = ctypes.POINTER(TranscriptC)()
        error = model._lib.moonshine_transcribe_without_streaming(
            model._handle, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(data), SAMPLE_RATE, 0,
            ctypes.byref(out))
        check_error(error)
        return " ".join(line.text.strip() for line in model._parse_transcript(out).lines if line.text.strip())

    def transcribe(self, audio: Audio) -> Transcript:
        """Decode piece by piece; the timeout is checked between pieces (one piece's decoding
        cannot be interrupted, and is at most MAX_PIECE_S of audio)."""
        if self._model is None:
            raise EngineError("Moonshine model is not loaded", code="engine_unavailable")
        samples = np.asarray(audio.samples)
        voiced_s = speech_seconds(samples)
        if voiced_s < MIN_SPEECH_S:
            return Transcript(text="", engine=self.name, language="en")
        deadline = time.monotonic() + self._settings.timeout_s
        texts: list[str] = []
        with self._lock:
            for piece in pieces(samples):
                if time.monotonic() > deadline:
                    raise EngineError(f"Moonshine exceeded {self._settings.timeout_s:g} s", code="engine_timeout")
                try:
                    texts.append(self._decode(piece.astype(np.float32) / 32768.0))
                except Exception as exc:  # noqa: BLE001 - MoonshineError and ctypes errors alike
                    raise EngineError(f"Moonshine failed: {exc}", code="engine_error") from exc
        text = spoken(" ".join(t for t in texts if t))
        if len(text.split()) == 1 and voiced_s > LONE_WORD_MAX_S:
            text = ""
        return Transcript(text=text, engine=self.name, language="en")

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Sequential: the model stays resident, so batching saves nothing."""
        return transcribe_each(self.transcribe, audios)

    def close(self) -> None:
        with self._lock:
            if self._model is not None:
                self._model.close()
            self._model = None
