"""The one job runner: under an admission ticket, run the work within its deadline, finish, give the slot back.

Every source hands its admitted work here, so the deadline (one `jobs.timeout_s` per file of a
batch, agent.engines.deadline: an engine past it is stopped and the job fails with `timeout`)
and the slot's release cannot differ between sources. A long job no longer touches the systemd
watchdog: it is stopped by its deadline, not the device by systemd. The source keeps its own
finishing (the inbox's finish protocol, an MQTT answer, a fleet reply): it is passed as `finish`
and runs outside the deadline but still under the ticket, so a stopping agent that waits for the
slots to empty also waits for the file to be finished or the answer to be sent.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

from agent.engines.deadline import job_deadline
from agent.errors import AgentError
from agent.jobs.admission import Ticket
from agent.jobs.pipeline import Job

log = logging.getLogger(__name__)

Result = dict[str, Any] | AgentError
T = TypeVar("T")


class Runner:
    def __init__(self, pipeline: Any, timeout_s: float) -> None:
        """`pipeline` has `run(job_id, source, load, summarize=)` and `run_batch(jobs)`;
        `timeout_s` is jobs.timeout_s, pushed again by `reconfigure`."""
        self._pipeline = pipeline
        self._timeout_s = timeout_s

    def reconfigure(self, settings: Any) -> None:
        """A new jobs.timeout_s applies from the next job on."""
        self._timeout_s = settings.jobs.timeout_s

    def run(self, ticket: Ticket, jobs: list[Job], *, finish: Callable[[list[Result]], None] | None = None,
            catch_all: bool = False) -> list[Result]:
        """Run one job (`pipeline.run`) or a batch in one engine run (`pipeline.run_batch`).

        Each job's record or AgentError comes back in order. `catch_all`: an unexpected exception
        of a single job becomes an `internal` error too (a fleet sender waits for exactly one
        answer); without it, it propagates (an inbox file then stays claimed, as its protocol says).
        """
        try:
            return self.run_admitted(jobs, finish=finish, catch_all=catch_all)
        finally:
            ticket.release()

    def run_admitted(self, jobs: list[Job], *, finish: Callable[[list[Result]], None] | None = None,
                     catch_all: bool = False) -> list[Result]:
        """`run` for a caller that already holds the slot and gives it back itself (a request that
        names an inbox file: the request's ticket, the inbox's own claim, run and finish)."""
        with job_deadline(self._timeout_s * len(jobs)):   # one timeout per file of the batch
            if len(jobs) == 1:
                results: list[Result] = [self._run_one(jobs[0], catch_all)]
            else:
                results = list(self._pipeline.run_batch(jobs))
        if finish is not None:
            finish(results)
        return results

    def call(self, ticket: Ticket, job_id: str, work: Callable[[], T], *,
             finish: Callable[[T], None] | None = None) -> T:
        """Heavy work that is not a pipeline job (a `transcribe` / `summarize` request)."""
        try:
            with job_deadline(self._timeout_s):
                result = work()
            if finish is not None:
                finish(result)
            return result
        finally:
            ticket.release()

    def _run_one(self, job: Job, catch_all: bool) -> Result:
        try:
            return self._pipeline.run(job.job_id, job.source, job.load, summarize=job.summarize)
        except AgentError as exc:
            return exc
        except Exception:
            if not catch_all:
                raise
            log.exception("job %s failed", job.job_id)
            return AgentError("internal error; see the agent's log")
