"""`transcribe` and `summarize` on request: heavy, so they run under the job slot.

The dispatcher has taken the slot before these run; they only load, run and answer. A `file`
names an attacker-chosen path, so it must be a plain name of a regular file waiting in the inbox
(no path, no symlink, nothing hidden or partial), and it is claimed and finished the inbox's way.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from agent.errors import AgentError, RequestError
from agent.jobs.loading import decode_b64, load_audio_file, load_bytes
from agent.jobs.pipeline import Source
from agent.jobs.results import answer_fields
from agent.jobs.retry import transient
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
    inbox = sv.inbox.current
    if inbox is None:
        raise RequestError("the inbox is disabled", code="bad_request")
    if name != os.path.basename(name) or not sv.inbox_name_ok(name) or "\x00" in name:
        raise RequestError("'file' must name a file in the inbox folder", code="forbidden")
    path = inbox.path / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RequestError(f"no file '{name[:200]}' is waiting in the inbox", code="not_found") from None
    except (OSError, ValueError):   # e.g. ENAMETOOLONG: no such name can be in the inbox
        raise RequestError("'file' must name a file in the inbox folder", code="forbidden") from None
    if not stat.S_ISREG(st.st_mode):
        raise RequestError("'file' must be a regular file inside the inbox (no symlinks)", code="forbidden")
    claimed = inbox.claim(name)
    if claimed is None:
        raise RequestError(f"'{name}' was taken by another job", code="not_found")
    try:
        record = sv.pipeline.run(job_id, Source("request", name),
                                 lambda: load_audio_file(claimed.path, inbox.settings), summarize=summarize)
    except AgentError as exc:
        if not (transient(exc) and _unclaim(claimed.path, inbox.path / name)):
            inbox.finish(claimed, {"job_id": job_id, **exc.as_dict()}, ok=False)
        raise
    inbox.finish(claimed, record, ok=True)
    return _answer(record)


def _unclaim(claimed: Any, waiting: Any) -> bool:
    """Not the file's fault (agent/jobs/retry.py): back into the inbox, where the inbox worker
    takes it again. A link, never a rename: a new file of the same name is never overwritten."""
    try:
        os.link(claimed, waiting)
    except OSError:
        return False
    try:
        os.unlink(claimed)
    except OSError:
        os.unlink(waiting)   # one place only: it stays claimed and is finished as failed
        return False
    return True


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
