"""Summaries from Anthropic's Messages API, spoken directly over HTTP (no SDK).

Why no SDK: it would pull in httpx, pydantic and friends — tens of MB on a 512 MB device —
for one POST. The wire format is small and stable (anthropic-version 2023-06-01).
"""

from __future__ import annotations

from typing import Any

from agent.engines.base import Summary
from agent.engines.extractive import count_words
from agent.engines.http_retry import make_session, post_with_retries, response_json
from agent.engines.chat_format import render_prompt
from agent.errors import EngineError
from agent.settings import SummarizerSettings

ANTHROPIC_VERSION = "2023-06-01"


def message_text(payload: Any, source: str) -> str:
    """The concatenated `text` blocks of a Messages answer; anything else is `engine_error`."""
    blocks = payload.get("content") if isinstance(payload, dict) else None
    if not isinstance(blocks, list):
        raise EngineError(f"unexpected answer from {source}: no content list", code="engine_error")
    texts = [block.get("text") for block in blocks if isinstance(block, dict) and block.get("type") == "text"]
    if not all(isinstance(text, str) for text in texts):
        raise EngineError(f"unexpected answer from {source}: text block without text", code="engine_error")
    text = "".join(texts).strip()
    if not text:
        raise EngineError(f"{source} returned an empty summary", code="engine_error")
    return text


class AnthropicSummarizer:
    """POST {base_url}/v1/messages with x-api-key; one Session for connection reuse."""

    name = "anthropic"

    def __init__(self, settings: SummarizerSettings) -> None:
        self.settings = settings
        self.options = settings.anthropic
        self._session = None

    def load(self) -> None:
        """Check the key and open the Session; no request is sent (calls cost money)."""
        if not self.options.api_key:
            raise EngineError(
                "anthropic summarizer: no API key (set summarizer.anthropic.api_key or ANTHROPIC_API_KEY)",
                code="engine_unavailable")
        if self._session is None:
            self._session = make_session()

    def summarize(self, text: str) -> Summary:
        text = text.strip()
        if not text or count_words(text) < self.settings.min_words:
            return Summary(text, self.name)
        self.load()
        url = self.options.base_url.rstrip("/") + "/v1/messages"
        body = {
            "model": self.options.model,
            "max_tokens": self.settings.max_tokens,
            "messages": [{"role": "user", "content": render_prompt(self.settings.prompt, text)}],
        }
        response = post_with_retries(
            self._session, url,
            max_retries=self.options.max_retries,
            timeout_s=min(self.options.timeout_s, self.settings.timeout_s),
            json=body,
            headers={
                "x-api-key": self.options.api_key,
                "anthropic-version": ANTHROPIC_VERSION,
                "content-type": "application/json",
            },
        )
        return Summary(message_text(response_json(response), url), self.name)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
