"""The engines in use: built from settings, warmed up in the background, swapped on config change.

Warm-up runs off the start-up path so `online` is not delayed by model loading; a job that
arrives while an engine is still loading waits for it instead of failing.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Callable

from agent.engines import make_summarizer, make_transcriber
from agent.audio.clip import Audio
from agent.engines.base import Progress, Summarizer, Summary, Transcriber, Transcript
from agent.errors import EngineError
from agent.settings import SummarizerSettings, TranscriberSettings

log = logging.getLogger(__name__)


def _warm_job_path() -> None:
    """Import the job path's audio decoder and VAD ahead of the first job (about 15 ms of imports).

    Only once an engine inside this process has brought numpy in: then they add little memory,
    while with every engine in its own process numpy would add 15 MB to an idle agent.
    """
    import agent.audio.vad  # noqa: F401
    import agent.audio.wav  # noqa: F401


class EngineSlot:
    """One engine and its readiness, loaded on a background thread."""

    def __init__(self, kind: str, build: Callable[[], Any], name: str, on_change: Callable[[], None]) -> None:
        self.kind = kind
        self.name = name
        self._build = build
        self._on_change = on_change
        self.engine: Any = None
        self.error: str | None = None
        self.load_ms: float | None = None
        self._loaded = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._load, name=f"load-{self.kind}", daemon=True).start()

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            engine = self._build()
            engine.load()
            if self.kind == "transcriber" and "numpy" in sys.modules:
                _warm_job_path()
            self.engine = engine
            log.info("%s %s ready in %.0f ms", self.kind, self.name, (time.monotonic() - t0) * 1000)
        except Exception as exc:  # an engine that cannot load must not take the agent down
            self.error = str(exc) or type(exc).__name__
            log.error("%s %s unavailable: %s", self.kind, self.name, self.error)
        self.load_ms = round((time.monotonic() - t0) * 1000, 1)
        self._loaded.set()
        self._on_change()

    def get(self, timeout: float) -> Any:
        if not self._loaded.wait(timeout):
            raise EngineError(f"{self.kind} {self.name} is still loading", code="engine_unavailable")
        if self.engine is None:
            raise EngineError(f"{self.kind} {self.name} is unavailable: {self.error}", code="engine_unavailable")
        return self.engine

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "ready": self.ready, "error": self.error, "load_ms": self.load_ms}

    @property
    def server_pid(self) -> int | None:
        """Pid of the engine's kept server process (llama_server), None when it has none."""
        server = getattr(self.engine, "server", None)
        return getattr(server, "pid", None)

    def restart(self) -> bool:
        """Restart the engine's server in the background (memory relief); False if it has none."""
        restart = getattr(self.engine, "restart", None)
        if restart is None:
            return False
        restart()
        return True

    def close(self) -> None:
        self._loaded.wait(30)
        if self.engine is not None:
            try:
                self.engine.close()
            except Exception:
                log.exception("closing %s %s failed", self.kind, self.name)


class Engines:
    def __init__(self, transcriber: TranscriberSettings, summarizer: SummarizerSettings,
                 on_change: Callable[[], None], offload: Any = None) -> None:
        """`offload`: the fleet engine's way to the workers (agent/mqtt/offload.py), built by the app."""
        self._on_change = on_change
        self._offload = offload
        self._t_settings = transcriber
        self._s_settings = summarizer
        self.transcriber = self._transcriber_slot(transcriber)
        self.summarizer = self._summarizer_slot(summarizer)

    def _transcriber_slot(self, s: TranscriberSettings) -> EngineSlot:
        return EngineSlot("transcriber", lambda: make_transcriber(s, self._offload), s.engine, self._on_change)

    def _summarizer_slot(self, s: SummarizerSettings) -> EngineSlot:
        return EngineSlot("summarizer", lambda: make_summarizer(s), s.engine, self._on_change)

    def start(self) -> None:
        self.transcriber.start()
        self.summarizer.start()

    def reconfigure(self, transcriber: TranscriberSettings, summarizer: SummarizerSettings) -> list[str]:
        """Rebuild only the engines whose settings changed; returns the restarted components."""
        restarted = []
        if transcriber != self._t_settings:
            old, self._t_settings = self.transcriber, transcriber
            self.transcriber = self._transcriber_slot(transcriber)
            self.transcriber.start()
            threading.Thread(target=old.close, daemon=True).start()
            restarted.append("transcriber")
        if summarizer != self._s_settings:
            old, self._s_settings = self.summarizer, summarizer
            self.summarizer = self._summarizer_slot(summarizer)
            self.summarizer.start()
            threading.Thread(target=old.close, daemon=True).start()
            restarted.append("summarizer")
        return restarted

    def transcribe(self, audio: Audio, progress: Progress | None = None) -> Transcript:
        """`progress` goes to engines that report it (`reports_progress`); the others ignore it."""
        engine: Transcriber = self.transcriber.get(self._t_settings.timeout_s)
        if progress is not None and getattr(engine, "reports_progress", False):
            return engine.transcribe(audio, progress=progress)  # type: ignore[call-arg]
        return engine.transcribe(audio)

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        engine: Transcriber = self.transcriber.get(self._t_settings.timeout_s)
        return engine.transcribe_batch(audios)

    def summarize(self, text: str) -> Summary:
        engine: Summarizer = self.summarizer.get(self._s_settings.timeout_s)
        return engine.summarize(text)

    def batch_size(self) -> int:
        """How many waiting files one transcription run may take (1: no batching)."""
        s = self._t_settings
        if s.engine == "whisper_cpp" and s.whisper_cpp.batch != "off":
            return s.whisper_cpp.batch_max
        return 1

    @property
    def summarizes(self) -> bool:
        return self._s_settings.engine != "none"

    def describe(self) -> dict[str, Any]:
        return {"transcriber": self.transcriber.describe(), "summarizer": self.summarizer.describe()}

    def close(self) -> None:
        self.transcriber.close()
        self.summarizer.close()
