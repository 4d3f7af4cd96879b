"""Summaries from Anthropic's Messages API, spoken directly over HTTP (no SDK).

Why no SDK: it would pull in httpx, pydantic and friends — tens of MB on a 512 MB device —
for one POST. The wire format is small and stable (anthropic-version 2023-06-01).
"""

from __future__ import annotations

from typing import Any

from agent.engines.api_summarizer import ApiSummarizer
from agent.engines.chat_format import render_prompt
from agent.errors import EngineError

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


class AnthropicSummarizer(ApiSummarizer):
    """POST {base_url}/v1/messages with x-api-key; one Session for connection reuse."""

    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    path = "/v1/messages"

    def body(self, text: str) -> dict[str, Any]:
        return {
            "model": self.options.model,
            "max_tokens": self.settings.max_tokens,
            "messages": [{"role": "user", "content": render_prompt(self.settings.prompt, text)}],
        }

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.options.api_key, "anthropic-version": ANTHROPIC_VERSION,
                "content-type": "application/json"}

    def answer_text(self, payload: Any, source: str) -> str:
        return message_text(payload, source)
