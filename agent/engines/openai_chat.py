"""Summaries from any OpenAI-compatible chat-completions API (OpenAI, Ollama, vLLM, llama.cpp)."""

from __future__ import annotations

from agent.engines.base import Summary
from agent.engines.chat_format import chat_body, completion_text, render_prompt
from agent.engines.extractive import count_words
from agent.engines.http_retry import make_session, post_with_retries, response_json
from agent.errors import EngineError
from agent.settings import SummarizerSettings


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
