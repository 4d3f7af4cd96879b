"""The chat-completions wire format, shared by the OpenAI summarizer and the llama.cpp server.

Kept apart from `openai_chat` so the local llama.cpp path does not import `requests` (5.5 MB)
along with the remote API client.
"""

from __future__ import annotations

from typing import Any

from agent.errors import EngineError


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
