"""What the paid-API summarizers share: the key check, one Session, short transcripts kept as they
are, and retries bounded by both the engine's and the summarizer's timeout. Each API subclass says
only where to POST, with which headers and body, and how to read the answer."""

from __future__ import annotations

from typing import Any

from agent.engines.base import Summary
from agent.engines.extractive import count_words
from agent.engines.http_retry import make_session, post_with_retries, response_json
from agent.errors import EngineError
from agent.settings import SummarizerSettings


class ApiSummarizer:
    name = ""
    key_env = ""     # the environment variable that may hold the key, for the message
    path = ""        # appended to base_url

    def __init__(self, settings: SummarizerSettings) -> None:
        self.settings = settings
        self.options = getattr(settings, self.name)
        self._session = None

    def load(self) -> None:
        """Check the key and open the Session; no request is sent (calls cost money)."""
        if not self.options.api_key:
            raise EngineError(f"{self.name} summarizer: no API key (set summarizer.{self.name}.api_key or "
                              f"{self.key_env})", code="engine_unavailable")
        if self._session is None:
            self._session = make_session()

    def summarize(self, text: str) -> Summary:
        text = text.strip()
        if not text or count_words(text) < self.settings.min_words:
            return Summary(text, self.name)
        self.load()
        url = self.options.base_url.rstrip("/") + self.path
        response = post_with_retries(
            self._session, url,
            max_retries=self.options.max_retries,
            timeout_s=min(self.options.timeout_s, self.settings.timeout_s),
            json=self.body(text),
            headers=self.headers(),
        )
        return Summary(self.answer_text(response_json(response), url), self.name)

    def body(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def answer_text(self, payload: Any, source: str) -> str:
        raise NotImplementedError

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
