"""`transcribe` and `summarize` on request: heavy, so they run under the job slot.

The dispatcher has taken the slot before these run; they only load, run and answer. A `file`
names an attacker-chosen path: it is handed to the inbox source (agent/sources/inbox_worker.py),
which refuses anything but a plain name of a regular file waiting in the inbox and then claims,
runs and finishes it exactly as a dropped file, under the job id it was queued with.
"""

from __future__ import annotations

import time
from typing import Any

from agent.errors import AgentError, RequestError
from agent.jobs.loading import decode_b64, load_bytes
from agent.jobs.pipeline import Source
from agent.jobs.results import answer_fields
from handlers.base import Command, Request, Services


def transcribe(req: Request) -> dict[str, Any]:
    body, job_id, sv = req.body, req.job_id or "", req.services
    if ("file" in body) == ("audio_b64" in body):
        raise RequestError("give exactly one of 'file' or 'audio_b64'", code="bad_request")
    summarize = body.get("summarize", True)
    if "file" in body:
        return _transcribe_file(sv, body["file"], job_id, summarize)
    data = decode_b64(body["audio_b64"])
    record = sv.pipeline.run(job_id, Source("request", "audio_b64"),
                             lambda: load_bytes(data, sv.store.settings.inbox), summarize=summarize)
    return _answer(record)


def _transcribe_file(sv: Services, name: str, job_id: str, summarize: bool) -> dict[str, Any]:
    """The inbox source claims, runs and finishes the file as if it had been dropped; this only
    answers with its record."""
    return _answer(sv.inbox.run_named(name, job_id, summarize))


def _answer(record: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": record["job_id"], **answer_fields(record)}


def summarize(req: Request) -> dict[str, Any]:
    pipeline, job_id = req.services.pipeline, req.job_id or ""
    source = {"kind": "request", "name": "summarize"}
    pipeline.job_event(job_id, "running", source)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        summary = pipeline.summarize_text(req.body["text"], timings)
    except AgentError as exc:
        pipeline.job_event(job_id, "failed", source, error=exc.as_dict())
        raise
    timings["total"] = round((time.monotonic() - t0) * 1000, 1)
    pipeline.job_event(job_id, "done", source, timings_ms=timings)
    return {"job_id": job_id, "text": summary.text if summary else "",
            "engine": summary.engine if summary else None, "timings_ms": timings}


COMMANDS = [
    Command("transcribe", transcribe, heavy=True,
            fields={"file": ((str,), False), "audio_b64": ((str,), False), "summarize": ((bool,), False)}),
    Command("summarize", summarize, heavy=True, fields={"text": ((str,), True)}),
]
