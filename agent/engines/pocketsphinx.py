"""PocketSphinx 5.x: the realistic on-device engine for a Pi Zero 2W.

Why: about 110 MB resident and far faster than real time on one core, with the US-English model
shipped inside the wheel (nothing to download). Free dictation is weak (~40 % words), but with a
JSGF command grammar it is ~97 % accurate, and keyword spotting suits wake phrases. The module
is imported only in `load()` so choosing another engine costs nothing.

Timeouts: decoding runs at a small fraction of real time and the inbox caps audio length, so one
`process_raw` call is bounded; it cannot be interrupted, hence no in-call timeout.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio.clip import Audio

from agent.engines.base import Transcript, transcribe_each
from agent.errors import EngineError
from agent.settings import TranscriberSettings

log = logging.getLogger(__name__)

#: Detection threshold for keyword phrases given without one ("phrase /1e-20/" to override).
DEFAULT_KWS_THRESHOLD = "1e-20"
_HAS_THRESHOLD = re.compile(r"/[^/]+/\s*$")


def kws_lines(keywords: list[str]) -> str:
    """A PocketSphinx keyword file: one lower-case phrase per line with its threshold."""
    lines = []
    for phrase in keywords:
        phrase = phrase.strip()
        if not phrase:
            continue
        if not _HAS_THRESHOLD.search(phrase):
            phrase = f"{phrase.lower()} /{DEFAULT_KWS_THRESHOLD}/"
        lines.append(phrase)
    return "\n".join(lines) + "\n"


def spotted_phrases(text: str, keywords: list[str]) -> str:
    """Keyword-spotting output as configured phrases, each repeat in a row reported once.

    The decoder often reports one utterance of a phrase several times ("light light light").
    """
    known = sorted({_HAS_THRESHOLD.sub("", k).strip().lower() for k in keywords if k.strip()},
                   key=lambda p: len(p.split()), reverse=True)
    tokens = text.split()
    found: list[str] = []
    i = 0
    while i < len(tokens):
        for phrase in known:
            size = len(phrase.split())
            if " ".join(tokens[i:i + size]) == phrase:
                break
        else:
            phrase, size = tokens[i], 1
        if not found or found[-1] != phrase:
            found.append(phrase)
        i += size
    return " ".join(found)


class PocketsphinxTranscriber:
    """Transcriber using `pocketsphinx.Decoder` with the wheel's default en-US model."""

    name = "pocketsphinx"

    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._cfg = settings.pocketsphinx
        self._decoder: Any = None
        self._mode = "dictation"
        self._lock = threading.Lock()  # a Decoder holds one utterance at a time

    def load(self) -> None:
        """Build the decoder (dictation, JSGF grammar or keyword list) and decode 0.5 s silence."""
        if self._decoder is not None:
            return
        if self._settings.language not in ("en", "en-us", "en-US", "auto"):
            raise EngineError(f"pocketsphinx ships only a US-English model; language "
                              f"{self._settings.language!r} is not available", code="engine_unavailable")
        try:
            import pocketsphinx
        except ImportError as exc:
            raise EngineError("pocketsphinx is not installed: install voice-agent[pocketsphinx]",
                              code="engine_unavailable") from exc
        started = time.monotonic()
        options: dict[str, Any] = {"loglevel": "FATAL"}
        kws_file: str | None = None
        if self._cfg.grammar:
            if not Path(self._cfg.grammar).is_file():
                raise EngineError(f"JSGF grammar not found: {self._cfg.grammar}", code="engine_unavailable")
            options["jsgf"] = str(self._cfg.grammar)
            self._mode = "grammar"
        elif self._cfg.keywords:
            fd, kws_file = tempfile.mkstemp(prefix="voice-agent-kws-", suffix=".txt")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(kws_lines(self._cfg.keywords))
            options["kws"] = kws_file
            self._mode = "keywords"
        try:
            self._decoder = pocketsphinx.Decoder(**options)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise EngineError(f"pocketsphinx cannot start ({self._mode}): {exc}", code="engine_unavailable") from exc
        finally:
            if kws_file:  # read while the decoder was built; not needed afterwards
                os.unlink(kws_file)
        self.transcribe(Audio(np.zeros(8000, dtype=np.int16)))
        log.info("pocketsphinx (%s) ready in %.2f s", self._mode, time.monotonic() - started)

    def transcribe(self, audio: Audio) -> Transcript:
        if self._decoder is None:
            raise EngineError("pocketsphinx is not loaded", code="engine_unavailable")
        pcm = np.asarray(audio.samples)
        if pcm.dtype != np.int16:
            pcm = np.clip(pcm * (32768.0 if pcm.dtype.kind == "f" else 1.0), -32768, 32767).astype(np.int16)
        data = pcm.astype("<i2", copy=False).tobytes()
        decoder = self._decoder
        with self._lock:
            try:
                decoder.start_utt()
                # One call with full_utt=True: the whole utterance normalises cepstra (CMN),
                # which measured clearly better than feeding chunks.
                decoder.process_raw(data, no_search=False, full_utt=True)
                spotted = decoder.hyp()  # keyword spotting reports detections before end_utt
                decoder.end_utt()
                final = decoder.hyp()
            except RuntimeError as exc:
                raise EngineError(f"pocketsphinx failed: {exc}", code="engine_error") from exc
        hyp = final if final is not None else spotted
        text = hyp.hypstr.strip() if hyp is not None else ""
        if self._mode == "keywords":
            text = spotted_phrases(text, list(self._cfg.keywords or []))
        return Transcript(text=text, engine=self.name, language="en")

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Sequential: the decoder is resident and decoding is already faster than real time."""
        return transcribe_each(self.transcribe, audios)

    def close(self) -> None:
        with self._lock:
            self._decoder = None
