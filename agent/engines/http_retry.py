"""One small HTTP helper shared by every engine that talks to a remote or local API.

Why it exists: OpenAI-compatible APIs, Anthropic and a whisper.cpp server all fail the same
way (429 with Retry-After, transient 5xx, hung sockets), and each engine must turn those into
the same public error codes. Keeping the retry policy here means one place to get right.

Request bodies must be re-sendable: pass `bytes` (not open file objects) in `files=`/`data=`,
because a retried attempt sends them again.
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

import requests

from agent.engines.deadline import job_timeout, past
from agent.errors import EngineError

#: Status codes worth another attempt: rate limiting and server-side trouble.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

# Indirection so tests can make waits instant without patching `time` globally.
_sleep = time.sleep


def make_session() -> requests.Session:
    """A Session so connections (and TLS handshakes) are reused across calls.

    `trust_env` stays on so standard proxy variables keep working on managed networks.
    """
    session = requests.Session()
    session.headers["User-Agent"] = "voice-agent"
    return session


def _retry_after_s(response: requests.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or HTTP-date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _short_body(response: requests.Response, limit: int = 200) -> str:
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - undecodable bodies are not worth failing over
        return ""
    text = " ".join(text.split())
    return text[:limit]


def post_with_retries(
    session: requests.Session,
    url: str,
    *,
    max_retries: int,
    timeout_s: float,
    backoff_s: float = 0.5,
    max_wait_s: float = 30.0,
    **requests_kwargs: Any,
) -> requests.Response:
    """POST, retrying 429/5xx and connection failures with exponential backoff.

    Returns the first 2xx/3xx response. Raises `EngineError`:
    - `engine_timeout` when the server does not answer within `timeout_s` (not retried: the
      caller's time budget is already spent, and a retry would double it);
    - `engine_error` for other 4xx answers, for 429/5xx once `max_retries` retries are used up,
      and when the server cannot be reached at all.
    A `Retry-After` header sets the wait (capped at `max_wait_s`, so a hostile or confused server
    cannot park a job for an hour); otherwise the wait is `backoff_s * 2**attempt` with jitter.
    """
    requests_kwargs.pop("timeout", None)
    attempts = max(0, int(max_retries)) + 1
    last_problem = ""
    for attempt in range(attempts):
        wait: float | None = None
        try:
            response = session.post(url, timeout=timeout_s, **requests_kwargs)
        except requests.Timeout as exc:
            if past():  # the job's own deadline cut this wait (agent.engines.deadline)
                raise job_timeout() from exc
            raise EngineError(f"no answer from {url} within {timeout_s:g} s", code="engine_timeout") from exc
        except requests.ConnectionError as exc:
            last_problem = f"cannot reach {url}: {exc.__class__.__name__}"
            if attempt + 1 >= attempts:
                raise EngineError(last_problem, code="engine_error") from exc
        else:
            if response.status_code < 400:
                return response
            body = _short_body(response)
            last_problem = f"HTTP {response.status_code} from {url}" + (f": {body}" if body else "")
            if response.status_code not in RETRY_STATUS or attempt + 1 >= attempts:
                raise EngineError(last_problem, code="engine_error", status=response.status_code)
            wait = _retry_after_s(response)
            response.close()
        if wait is None:
            wait = backoff_s * (2 ** attempt) * (0.5 + random.random())
        _sleep(min(wait, max_wait_s))
    # Unreachable: the loop either returns or raises on its last attempt.
    raise EngineError(last_problem or f"request to {url} failed", code="engine_error")


def response_json(response: requests.Response) -> Any:
    """The decoded JSON body, or `engine_error` when a server answers 200 with garbage."""
    try:
        return response.json()
    except ValueError as exc:
        raise EngineError(
            f"malformed JSON from {response.url}: {_short_body(response, 120)!r}", code="engine_error"
        ) from exc
