"""faster-whisper (CTranslate2) running in the agent's own process.

Why in-process: the model stays loaded (~330 MB resident for base int8), so each request skips
the load and audio goes in as a float32 array with no WAV encoding or file at all. That memory
is too much for a 512 MB Pi Zero 2W next to anything else; this engine is meant for bigger
hosts or fleet workers. `faster_whisper` is imported inside `load()` only, because importing it
alone costs hundreds of MB and seconds of start-up.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.engines.base import Audio, SAMPLE_RATE, Transcript, transcribe_each
from agent.errors import EngineError
from agent.settings import TranscriberSettings

log = logging.getLogger(__name__)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 PCM to the [-1, 1) float32 that Whisper models take; float input passes through."""
    data = np.asarray(samples)
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    return data.astype(np.float32) / 32768.0


class FasterWhisperTranscriber:
    """Transcriber backed by `faster_whisper.WhisperModel` on the CPU."""

    name = "faster_whisper"

    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._cfg = settings.faster_whisper
        self._model: Any = None
        # CTranslate2 already uses `threads` cores per call; two calls at once would oversubscribe.
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model once and decode 1 s of silence so the first real job is not slow."""
        if self._model is not None:
            return
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineError("faster-whisper is not installed: install voice-agent[faster-whisper]",
                              code="engine_unavailable") from exc
        model = self._cfg.model
        looks_like_path = os.sep in model or model.startswith(".") or Path(model).exists()
        if looks_like_path and not (Path(model) / "model.bin").is_file():
            raise EngineError(f"faster-whisper model folder not found or incomplete (no model.bin): {model}",
                              code="engine_unavailable")
        started = time.monotonic()
        try:
            self._model = WhisperModel(model, device="cpu", compute_type=self._cfg.compute_type,
                                       cpu_threads=self._cfg.threads)
        except Exception as exc:  # noqa: BLE001 - download, format and memory errors all mean "cannot run"
            raise EngineError(f"cannot load faster-whisper model {model!r}: {exc}",
                              code="engine_unavailable") from exc
        self.transcribe(Audio(np.zeros(SAMPLE_RATE, dtype=np.int16)))
        log.info("faster-whisper %s loaded and warmed up in %.2f s", model, time.monotonic() - started)

    def transcribe(self, audio: Audio) -> Transcript:
        """Decode in-process; the timeout is checked between segments (inference itself cannot be
        interrupted), so a run may overshoot by at most one segment's decoding time."""
        if self._model is None:
            raise EngineError("faster-whisper model is not loaded", code="engine_unavailable")
        language = None if self._settings.language in (None, "", "auto") else self._settings.language
        deadline = time.monotonic() + self._settings.timeout_s
        with self._lock:
            try:
                segments, info = self._model.transcribe(
                    to_float32(audio.samples), language=language, beam_size=self._cfg.beam_size,
                )
                texts: list[str] = []
                for segment in segments:  # a generator: decoding happens while iterating
                    texts.append(segment.text.strip())
                    if time.monotonic() > deadline:
                        raise EngineError(f"faster-whisper exceeded {self._settings.timeout_s:g} s",
                                          code="engine_timeout")
            except EngineError:
                raise
            except Exception as exc:  # noqa: BLE001 - CTranslate2 raises plain RuntimeErrors
                raise EngineError(f"faster-whisper failed: {exc}", code="engine_error") from exc
        return Transcript(text=" ".join(t for t in texts if t), engine=self.name,
                          language=getattr(info, "language", None) or language)

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Sequential: the model is already resident, so batching saves no load time here."""
        return transcribe_each(self.transcribe, audios)

    def close(self) -> None:
        """Drop the model so its memory returns to the system (CTranslate2 frees on deletion)."""
        with self._lock:
            self._model = None
        gc.collect()
