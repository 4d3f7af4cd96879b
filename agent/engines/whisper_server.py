"""whisper.cpp's HTTP server (`whisper-server`): `POST {url}/inference` with a multipart WAV.

Why: the server keeps the model loaded, so a busy device skips the per-run model load of the
CLI engine. Either point `url` at a server that already runs, or give `command` and the agent
starts it on 127.0.0.1:`port`, health-checks `GET /health` (falling back to `GET /` for builds
without that route) and restarts it with backoff through `ServerProcess`.

In `command`, `{port}`, `{model}` (transcriber.whisper_cpp.model) and `{threads}` are replaced:

    command: [whisper-server, -m, "{model}", --host, 127.0.0.1, --port, "{port}", -t, "{threads}"]
"""

from __future__ import annotations

import threading

import numpy as np
import requests

from agent.audio.wav import encode_wav
from agent.audio.clip import Audio
from agent.engines.base import Transcript, transcribe_each
from agent.engines.deadline import bounded
from agent.engines.http_retry import make_session, post_with_retries, response_json
from agent.engines.supervisor import ServerProcess
from agent.errors import EngineError
from agent.settings import TranscriberSettings

#: Retries on 429/5xx; a local server answers 503 while it loads.
MAX_RETRIES = 2
HEALTH_INTERVAL_S = 10.0


def server_command(command: list[str], *, port: int, model: str | None, threads: int) -> list[str]:
    """Fill the placeholders with plain replacement (no str.format: other braces stay intact)."""
    out = []
    for part in command:
        part = str(part).replace("{port}", str(port)).replace("{threads}", str(threads))
        if "{model}" in part:
            if not model:
                raise EngineError("whisper_server.command uses {model} but transcriber.whisper_cpp.model "
                                  "is not set", code="engine_unavailable")
            part = part.replace("{model}", model)
        out.append(part)
    return out


class WhisperServerTranscriber:
    """Transcriber that talks to (and optionally runs) a whisper.cpp server."""

    name = "whisper_server"

    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._cfg = settings.whisper_server
        self._session: requests.Session | None = None
        self._server: ServerProcess | None = None
        self._url: str | None = None
        # Held during a request so the health monitor does not mistake a busy server for a hung one.
        self._busy = threading.Lock()

    def load(self) -> None:
        """Connect to `url`, or start `command` and wait until it is healthy."""
        if self._session is None:
            self._session = make_session()
        if self._cfg.url:
            self._url = self._cfg.url.rstrip("/")
            return
        if not self._cfg.command:
            raise EngineError("whisper_server needs either transcriber.whisper_server.url or .command",
                              code="engine_unavailable")
        if self._server is None:
            base = f"http://127.0.0.1:{self._cfg.port}"
            command = server_command(self._cfg.command, port=self._cfg.port,
                                     model=self._settings.whisper_cpp.model,
                                     threads=self._settings.whisper_cpp.threads)
            self._server = ServerProcess(
                "whisper-server", command, f"{base}/health",
                start_timeout_s=self._cfg.timeout_s,
                health_interval_s=HEALTH_INTERVAL_S,
                health_fallback_url=f"{base}/",
            )
            self._url = base
        self._server.start()
        self._server.start_monitor(self._busy)

    @property
    def url(self) -> str | None:
        return self._url

    def transcribe(self, audio: Audio) -> Transcript:
        if self._session is None or self._url is None:
            self.load()
        assert self._session is not None and self._url is not None
        data = {"response_format": "json", "temperature": "0.0"}
        language = self._settings.language
        if language:
            data["language"] = language
        wav = encode_wav(np.asarray(audio.samples))
        with self._busy:
            if self._server is not None:
                self._server.ensure_running()
            response = post_with_retries(
                self._session, f"{self._url}/inference",
                max_retries=MAX_RETRIES,
                timeout_s=bounded(min(self._cfg.timeout_s, self._settings.timeout_s)),
                files={"file": ("audio.wav", wav, "audio/wav")},
                data=data,
            )
        body = response_json(response)
        if isinstance(body, dict) and body.get("error"):
            raise EngineError(f"whisper-server: {body['error']}", code="engine_error")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise EngineError("unexpected whisper-server answer: no 'text'", code="engine_error")
        return Transcript(text=" ".join(body["text"].split()), engine=self.name,
                          language=language if language != "auto" else None)

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Sequential: the server is already warm and takes one file per request."""
        return transcribe_each(self.transcribe, audios)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._url = None
        if self._session is not None:
            self._session.close()
            self._session = None
