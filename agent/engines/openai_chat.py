"""Summaries from any OpenAI-compatible chat-completions API (OpenAI, Ollama, vLLM, llama.cpp).

Also the home of the chat-completions wire helpers (`render_prompt`, `chat_body`,
`completion_text`) because the local llama.cpp server speaks the same protocol.
"""

from __future__ import annotations

from typing import Any

from agent.engines.base import Summary
from agent.engines.extractive import count_words
from agent.engines.http_retry import make_session, post_with_retries, response_json
from agent.errors import EngineError
from agent.settings import SummarizerSettings


def render_prompt(template: str, text: str) -> str:
    """The prompt with `{text}` replaced literally.

    Plain replacement rather than str.format: a prompt that contains JSON or other braces must
    not fail at the first transcript.
    """
    return template.replace("{text}", text)


def chat_body(prompt: str, max_tokens: int, model: str | None = None) -> dict[str, Any]:
    """A chat-completions request body: one user message, low temperature for faithful summaries."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.2,
    }
    if model is not None:
        body["model"] = model
    return body


def completion_text(payload: Any, source: str) -> str:
    """`choices[0].message.content` of a chat-completions answer, stripped.

    Anything else (an error object with status 200, a missing field, empty content) is
    `engine_error`: publishing "" or a stringified dict as a summary would be worse.
    """
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise EngineError(f"unexpected answer from {source}: no choices[0].message.content",
                          code="engine_error") from exc
    if not isinstance(content, str):
        raise EngineError(f"unexpected answer from {source}: content is {type(content).__name__}",
                          code="engine_error")
    content = content.strip()
    if not content:
        raise EngineError(f"{source} returned an empty summary", code="engine_error")
    return content


class OpenAISummarizer:
    """POST {base_url}/chat/completions with a Bearer key; one Session for connection reuse."""

    name = "openai"

    def __init__(self, settings: SummarizerSettings) -> None:
        self.settings = settings
        self.options = settings.openai
        self._session = None

    def load(self) -> None:
        """Check the key and open the Session; no request is sent (calls cost money)."""
        if not self.options.api_key:
            raise EngineError("openai summarizer: no API key (set summarizer.openai.api_key or OPENAI_API_KEY)",
                              code="engine_unavailable")
        if self._session is None:
            self._session = make_session()

    def summarize(self, text: str) -> Summary:
        text = text.strip()
        if not text or count_words(text) < self.settings.min_words:
            return Summary(text, self.name)
        self.load()
        url = self.options.base_url.rstrip("/") + "/chat/completions"
        response = post_with_retries(
            self._session, url,
            max_retries=self.options.max_retries,
            timeout_s=min(self.options.timeout_s, self.settings.timeout_s),
            json=chat_body(render_prompt(self.settings.prompt, text), self.settings.max_tokens, model=self.options.model),
            headers={"Authorization": f"Bearer {self.options.api_key}"},
        )
        return Summary(completion_text(response_json(response), url), self.name)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
