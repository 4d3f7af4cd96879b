"""The running job's deadline (`jobs.timeout_s`), as the engines working for it see it.

Why: a job past its timeout must stop the job, not the device. Withholding systemd watchdog pings
did the opposite: systemd killed the whole agent, the file re-ran after the restart, and the loop
went on. Now the runner opens a deadline around each job (`job_deadline`) and every engine caps
its own wait with `bounded(...)`:

- whisper.cpp (a child process per run): the run's timeout is cut to what is left of the job, so
  the child's process group is killed at the job's deadline;
- HTTP engines (whisper.cpp server, OpenAI, kept llama.cpp server): the request timeout is cut
  the same way, so the job stops waiting (the server itself keeps running for the next job);
- faster-whisper (in process): checked between decoded segments, the job stops at the next one;
- PocketSphinx (in process): one `process_raw` call cannot be interrupted; the pipeline checks
  the deadline after it returns, and the job fails then.

The engine call runs on the job's own thread (the runner's), so the deadline is kept per thread:
two job slots have two deadlines. `expired(...)` tells an engine's timeout apart from the job's,
so the job fails with `timeout` (its own budget spent) rather than `engine_timeout`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent.errors import EngineError

_current = threading.local()  # per job thread: (deadline on the monotonic clock, timeout_s)


@contextmanager
def job_deadline(timeout_s: float) -> Iterator[None]:
    """Everything run on this thread inside is part of one job that may take `timeout_s` in all."""
    outer = getattr(_current, "job", None)
    _current.job = (time.monotonic() + timeout_s, timeout_s)
    try:
        yield
    finally:
        _current.job = outer


def bounded(timeout_s: float) -> float:
    """`timeout_s` cut to what is left of the current job (never below a millisecond)."""
    job = getattr(_current, "job", None)
    if job is None:
        return timeout_s
    return max(0.001, min(timeout_s, job[0] - time.monotonic()))


def past() -> bool:
    """Whether the current job (if any) has run past its deadline."""
    job = getattr(_current, "job", None)
    return job is not None and time.monotonic() >= job[0]


def check() -> None:
    """Raise `timeout` when the current job has run past its deadline."""
    if past():
        raise job_timeout()


def job_timeout() -> EngineError:
    job = getattr(_current, "job", None)
    limit = f" ({job[1]:g} s)" if job is not None else ""
    return EngineError(f"the job ran longer than jobs.timeout_s{limit} and was stopped", code="timeout")


def expired(what: str, timeout_s: float) -> EngineError:
    """The error for an engine wait that ran out: the job's `timeout`, or the engine's own `engine_timeout`."""
    if past():
        return job_timeout()
    return EngineError(f"{what} took longer than {timeout_s:g} s and was stopped", code="engine_timeout")
