"""Which failed jobs are the file's fault, and when the others are tried again.

A file goes to `failed/` only when the decoder or the engine rejected it as input. An engine that
was OOM-killed (`engine_killed`), ran out of time (`engine_timeout`) or was not there
(`engine_unavailable`, e.g. still loading, or a fleet offload with no worker and no fallback)
says nothing about the file: it stays queued and is tried again after a backoff (doubling), and
admission lets it in only once memory allows (agent/jobs/admission.py). The tries are bounded
(`jobs.retry_tries`), so a file that kills its engine every time ends in `failed/` too, with the
count in its record. One exception: a job that no fleet worker answered, with no local fallback
(`unanswered` in the error, agent/engines/fleet.py), never ran at all, so it is kept queued
however long the fleet is away (the backoff still grows to its bound). The sources ask
`RetryPolicy.delay`; the policy keeps no state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError

#: Failures that are not the input's fault (see the module docstring).
TRANSIENT_CODES = frozenset({"engine_killed", "engine_timeout", "engine_unavailable", "memory_pressure"})
MAX_BACKOFF_S = 600.0


def transient(error: AgentError) -> bool:
    return error.code in TRANSIENT_CODES


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 5
    backoff_s: float = 5.0

    @classmethod
    def of(cls, settings: Any) -> RetryPolicy:
        return cls(tries=settings.jobs.retry_tries, backoff_s=settings.jobs.retry_backoff_s)

    def delay(self, error: AgentError, tries_done: int) -> float | None:
        """Seconds to wait before the next try of a job whose `tries_done`-th try failed with
        `error`; None when it is finished as failed (the input's fault, or no tries left)."""
        if not transient(error) or (tries_done >= self.tries and not error.details.get("unanswered")):
            return None
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** min(tries_done - 1, 16))


class Retries:
    """The policy now (pushed with `reconfigure`) and the tries of each job that is kept queued,
    by a key its source chooses (the claimed file's path); shared by every inbox worker."""

    def __init__(self, policy: RetryPolicy = RetryPolicy()) -> None:
        self.policy = policy
        self._tries: dict[str, int] = {}
        self._lock = threading.Lock()

    def reconfigure(self, settings: Any) -> None:
        self.policy = RetryPolicy.of(settings)

    def after_failure(self, key: str, error: AgentError) -> tuple[float | None, int]:
        """(seconds until the next try or None: finish it as failed, tries so far)."""
        with self._lock:
            tries = self._tries.get(key, 0) + 1
            delay = self.policy.delay(error, tries)
            if delay is None:
                self._tries.pop(key, None)
            else:
                self._tries[key] = tries
        return delay, tries

    def forget(self, key: str) -> None:
        with self._lock:
            self._tries.pop(key, None)
