"""`transcribe` and `summarize` on request: heavy, so they run under the job slot."""

from __future__ import annotations

from typing import Any

from agent.errors import RequestError
from handlers.base import Command, Request


def transcribe(req: Request) -> dict[str, Any]:
    if ("file" in req.body) == ("audio_b64" in req.body):
        raise RequestError("give exactly one of 'file' or 'audio_b64'", code="bad_request")
    return req.ctx.transcribe_request(req.body, req.job_id or "")


def summarize(req: Request) -> dict[str, Any]:
    return req.ctx.summarize_request(req.body["text"], req.job_id or "")


COMMANDS = [
    Command("transcribe", transcribe, heavy=True,
            fields={"file": ((str,), False), "audio_b64": ((str,), False), "summarize": ((bool,), False)}),
    Command("summarize", summarize, heavy=True, fields={"text": ((str,), True)}),
]
