"""A shared job's payload, checked before the device holds it (see agent/sources/fleet.py for the protocol).

Everything here is attacker-written: a job is refused with a coded error about itself
(`bad_request`, `payload_too_large`, `forbidden`, `reply_topic_forbidden`) before it is spooled or
takes a slot, and a job that names no usable reply topic is only logged (there is nobody to tell).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from agent.errors import AgentError, RequestError
from agent.sources.fleet_fetch import check_url

MAX_JOB_ID = 200
FIELDS = {"job_id", "audio_b64", "url", "reply_to", "summarize", "transaction"}


@dataclass(frozen=True)
class FleetJob:
    job_id: str
    reply_to: str
    audio_b64: str | None
    url: str | None
    summarize: bool
    transaction: str | None
    correlation: bytes | None


class Unanswerable(Exception):
    """A job without a usable reply topic: logged and dropped (there is nobody to tell)."""


class Refused(Exception):
    def __init__(self, error: AgentError, reply_to: str, job_id: str | None, transaction: str | None,
                 correlation: bytes | None) -> None:
        super().__init__(error.message)
        self.error, self.reply_to, self.job_id = error, reply_to, job_id
        self.transaction, self.correlation = transaction, correlation


def parse_job(payload: bytes, response_topic: str | None, correlation: bytes | None, *,
              max_bytes: int, url_allow: Sequence[str], reply_allowed: Callable[[object], bool]) -> FleetJob:
    """The job, or Refused (answer it) / Unanswerable (log it).

    The size is checked before a byte is parsed. Answers go only where `reply_allowed` says (the
    reply namespace, agent.mqtt.topics.Topics.reply_allowed): a `reply_to` elsewhere is refused on
    the MQTT 5 Response Topic when that one is allowed, else only logged.
    """
    fallback = response_topic if reply_allowed(response_topic) else None
    if len(payload) > max_bytes:
        message = f"job of {len(payload)} bytes exceeds mqtt.max_payload_bytes ({max_bytes})"
        if fallback:
            raise Refused(RequestError(message, code="payload_too_large"), fallback, None, None, correlation)
        raise Unanswerable(message)
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if fallback:
            raise Refused(RequestError("a job must be a JSON object", code="bad_request"),
                          fallback, None, None, correlation) from None
        raise Unanswerable(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        if fallback:
            raise Refused(RequestError("a job must be a JSON object", code="bad_request"),
                          fallback, None, None, correlation)
        raise Unanswerable("not a JSON object")
    reply_to = body.get("reply_to", response_topic)
    if not reply_allowed(reply_to):
        if fallback:
            raise Refused(RequestError("'reply_to' must be a topic below <topic_prefix>/results/ without "
                                       "wildcards", code="reply_topic_forbidden", field="reply_to"),
                          fallback, None, None, correlation)
        raise Unanswerable(f"reply_to {str(reply_to)[:80]!r} is outside the reply namespace")
    job_id = body.get("job_id")
    transaction = body.get("transaction") if isinstance(body.get("transaction"), str) else None

    def refuse(message: str, code: str = "bad_request", **details: Any) -> Refused:
        jid = job_id if isinstance(job_id, str) else None
        return Refused(RequestError(message, code=code, **details), reply_to, jid, transaction, correlation)

    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID:
        raise refuse(f"'job_id' must be a non-empty string of at most {MAX_JOB_ID} characters", field="job_id")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise refuse(f"unknown field '{unknown[0]}'", field=unknown[0])
    audio_b64, url = body.get("audio_b64"), body.get("url")
    if (audio_b64 is None) == (url is None):
        raise refuse("give exactly one of 'audio_b64' or 'url'")
    for name, value in (("audio_b64", audio_b64), ("url", url)):
        if value is not None and not isinstance(value, str):
            raise refuse(f"field '{name}' must be a string", field=name)
    if url is not None:   # a file:// URL or an unlisted host is refused before the job is held
        try:
            check_url(url, url_allow)
        except RequestError as exc:
            raise refuse(exc.message, code=exc.code, field="url") from None
    summarize = body.get("summarize", True)
    if not isinstance(summarize, bool):
        raise refuse("field 'summarize' must be a boolean", field="summarize")
    if "transaction" in body and transaction is None:
        raise refuse("field 'transaction' must be a string", field="transaction")
    return FleetJob(job_id, reply_to, audio_b64, url, summarize, transaction, correlation)
