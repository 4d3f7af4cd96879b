"""OpenAI-compatible speech-to-text over HTTP (`POST {base_url}/audio/transcriptions`).

Why: a Pi Zero 2W can hand transcription to a cloud API or to any self-hosted server speaking
the same protocol (LocalAI, speaches, vLLM ...) and keep its own memory free. Audio is sent as
an in-memory WAV; retries, Retry-After and error codes come from `http_retry`.
"""

from __future__ import annotations

import os

import numpy as np
import requests

from agent.audio.wav import encode_wav
from agent.audio.clip import Audio
from agent.engines.base import Transcript, transcribe_each
from agent.engines.deadline import bounded
from agent.engines.http_retry import make_session, post_with_retries, response_json
from agent.errors import EngineError
from agent.settings import TranscriberSettings

#: Retries on 429/5xx (the transcriber settings have no knob for it; three is what SDKs use).
MAX_RETRIES = 3


class OpenAITranscriber:
    """Transcriber for the OpenAI audio transcription API and compatible servers."""

    name = "openai"

    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._cfg = settings.openai
        self._session: requests.Session | None = None
        self._key: str | None = None

    def load(self) -> None:
        """Check that a key is configured and open the session; no network call (may be offline)."""
        key = self._cfg.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise EngineError("no OpenAI API key: set transcriber.openai.api_key or OPENAI_API_KEY",
                              code="engine_unavailable")
        self._key = key
        if self._session is None:
            self._session = make_session()

    @property
    def url(self) -> str:
        return self._cfg.base_url.rstrip("/") + "/audio/transcriptions"

    def transcribe(self, audio: Audio) -> Transcript:
        if self._session is None or not self._key:
            self.load()
        assert self._session is not None
        data = {"model": self._cfg.model, "response_format": "json"}
        language = self._settings.language
        if language and language != "auto":
            data["language"] = language
        response = post_with_retries(
            self._session, self.url,
            max_retries=MAX_RETRIES,
            timeout_s=bounded(min(self._cfg.timeout_s, self._settings.timeout_s)),
            headers={"Authorization": f"Bearer {self._key}"},
            files={"file": ("audio.wav", encode_wav(np.asarray(audio.samples)), "audio/wav")},
            data=data,
        )
        body = response_json(response)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise EngineError(f"unexpected transcription answer from {self.url}: no 'text'", code="engine_error")
        return Transcript(text=body["text"].strip(), engine=self.name,
                          language=data.get("language") or body.get("language"))

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Sequential: the API takes one file per request."""
        return transcribe_each(self.transcribe, audios)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
