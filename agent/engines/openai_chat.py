"""Summaries from any OpenAI-compatible chat-completions API (OpenAI, Ollama, vLLM, llama.cpp)."""

from __future__ import annotations

from typing import Any

from agent.engines.api_summarizer import ApiSummarizer
from agent.engines.chat_format import chat_body, completion_text, render_prompt


class OpenAISummarizer(ApiSummarizer):
    """POST {base_url}/chat/completions with a Bearer key; one Session for connection reuse."""

    name = "openai"
    key_env = "OPENAI_API_KEY"
    path = "/chat/completions"

    def body(self, text: str) -> dict[str, Any]:
        return chat_body(render_prompt(self.settings.prompt, text), self.settings.max_tokens, model=self.options.model)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.options.api_key}"}

    def answer_text(self, payload: Any, source: str) -> str:
        return completion_text(payload, source)
