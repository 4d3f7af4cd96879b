"""Unit tests of the one admission step and the one job runner (agent/jobs/admission.py, runner.py).

Every source (inbox, microphone spool, request, fleet) starts heavy work only through these, so
the refusal codes, the slot accounting and the release on failure are pinned down here once.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agent.engines import deadline
from agent.errors import AgentError, RequestError
from agent.jobs.admission import Admission, Refusal, Ticket
from agent.jobs.pipeline import Job, Source
from agent.jobs.runner import Runner
from agent.jobs.slot import JobSlot
from agent.settings import JobsSettings, Settings


def admitted(result: Ticket | Refusal) -> Ticket:
    assert isinstance(result, Ticket), result
    return result


def refused(result: Ticket | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


# --- admission -----------------------------------------------------------------------------------


def test_each_closed_state_has_its_own_refusal_code() -> None:
    slot = JobSlot(1)
    admission = Admission(slot, retry_after_s=7)
    admission.set_paused(True)
    assert refused(admission.try_admit()).code == "paused"
    admission.set_paused(False)
    admission.set_memory_critical(True)
    assert refused(admission.try_admit()).code == "memory_pressure"
    admission.set_memory_critical(False)
    admission.set_stopping()
    assert refused(admission.try_admit()).code == "stopping"
    admission.set_stopping(False)
    ticket = admitted(admission.try_admit())
    busy = refused(admission.try_admit())
    assert (busy.code, busy.retry_after_s) == ("busy", 7)
    assert "1 job slot" in busy.message
    ticket.release()
    assert slot.running == 0
    admitted(admission.try_admit()).release()


def test_a_request_is_refused_only_for_memory_or_a_full_slot() -> None:
    """Pause stops the work the device takes on its own, not the answers it owes (as before)."""
    admission = Admission(JobSlot(1), retry_after_s=3)
    admission.set_paused(True)
    admitted(admission.try_admit(request=True)).release()
    admission.set_memory_critical(True)
    error = refused(admission.try_admit(request=True)).error()
    assert isinstance(error, RequestError)
    assert error.as_dict() == {"code": "memory_pressure", "message": "memory is critical; try again later",
                               "retry_after_s": 3}


def test_reconfigure_pushes_the_retry_hint() -> None:
    admission = Admission(JobSlot(0), retry_after_s=1)
    admission.reconfigure(Settings(jobs=JobsSettings(retry_after_s=42)))
    assert refused(admission.try_admit()).error().as_dict()["retry_after_s"] == 42


def test_ticket_release_is_idempotent_and_a_context_manager() -> None:
    slot = JobSlot(2)
    admission = Admission(slot)
    first = admitted(admission.try_admit())
    second = admitted(admission.try_admit())
    assert slot.running == 2
    first.release()
    first.release()   # a second release must not give back the slot `second` holds
    assert slot.running == 1 and second.held and not first.held
    with second:
        pass
    second.release()
    assert slot.running == 0


def blocked_admit(admission: Admission, **kwargs: Any) -> tuple[threading.Thread, list[Ticket | None]]:
    got: list[Ticket | None] = []
    thread = threading.Thread(target=lambda: got.append(admission.admit(timeout=10, **kwargs)), daemon=True)
    thread.start()
    return thread, got


def test_blocking_admit_wakes_when_a_slot_is_released() -> None:
    admission = Admission(JobSlot(1))
    holder = admitted(admission.try_admit())
    thread, got = blocked_admit(admission)
    thread.join(0.3)
    assert thread.is_alive() and not got, "no slot free: it waits"
    holder.release()
    thread.join(5)
    assert got and isinstance(got[0], Ticket)
    got[0].release()


def test_blocking_admit_wakes_on_resume_and_gives_up_when_cancelled() -> None:
    admission = Admission(JobSlot(1))
    admission.set_paused(True)
    thread, got = blocked_admit(admission)
    thread.join(0.3)
    assert thread.is_alive() and not got, "paused: it waits"
    admission.set_paused(False)
    thread.join(5)
    assert got and isinstance(got[0], Ticket)
    got[0].release()

    admission.set_memory_critical(True)
    stop = threading.Event()
    thread, got = blocked_admit(admission, cancelled=stop.is_set)
    thread.join(0.3)
    assert thread.is_alive()
    stop.set()
    admission.wake()
    thread.join(5)
    assert got == [None]
    assert admission.slot.running == 0


def test_blocking_admit_times_out_without_a_ticket() -> None:
    admission = Admission(JobSlot(0))
    assert admission.admit(timeout=0.05) is None


def test_listeners_hear_pushed_changes_and_slot_changes() -> None:
    admission = Admission(JobSlot(1))
    heard: list[int] = []
    admission.on_change(lambda: heard.append(1))
    admission.set_paused(True)
    admission.set_paused(True)   # no change, no call
    admission.set_paused(False)
    admitted(admission.try_admit(request=True)).release()
    assert len(heard) == 4


# --- runner --------------------------------------------------------------------------------------


class FakePipeline:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.runs: list[list[str]] = []

    def run(self, job_id: str, source: Source, load: Any, *, summarize: bool = True) -> dict:
        self.runs.append([job_id])
        self.time_left = deadline.bounded(1e9)
        if self.fail is not None:
            raise self.fail
        return {"job_id": job_id}

    def run_batch(self, jobs: list[Job]) -> list[dict | AgentError]:
        self.runs.append([j.job_id for j in jobs])
        self.time_left = deadline.bounded(1e9)
        return [{"job_id": j.job_id} for j in jobs]


def job(job_id: str) -> Job:
    return Job(job_id, Source("inbox", f"{job_id}.wav"), lambda: None)  # type: ignore[arg-type,return-value]


def test_runner_runs_within_the_deadline_finishes_then_releases() -> None:
    slot = JobSlot(1)
    admission = Admission(slot)
    pipeline = FakePipeline()
    running_at_finish: list[int] = []
    results = Runner(pipeline, 10.0).run(admitted(admission.try_admit()), [job("a"), job("b"), job("c")],
                                            finish=lambda r: running_at_finish.append(slot.running))
    assert results == [{"job_id": "a"}, {"job_id": "b"}, {"job_id": "c"}]
    assert pipeline.runs == [["a", "b", "c"]], "a batch is one engine run"
    assert 29 < pipeline.time_left <= 30, "one jobs.timeout_s per file of the batch"
    assert running_at_finish == [1], "the source finishes while still holding the slot"
    assert slot.running == 0


def test_runner_turns_an_agent_error_into_a_result() -> None:
    admission = Admission(JobSlot(1))
    error = AgentError("bad audio", code="corrupt")
    results = Runner(FakePipeline(fail=error), 10.0).run(admitted(admission.try_admit()), [job("a")])
    assert results == [error]
    assert admission.slot.running == 0


def test_runner_releases_the_slot_when_the_job_raises() -> None:
    admission = Admission(JobSlot(1))
    runner = Runner(FakePipeline(fail=RuntimeError("boom")), 10.0)
    with pytest.raises(RuntimeError):
        runner.run(admitted(admission.try_admit()), [job("a")])
    assert admission.slot.running == 0
    results = runner.run(admitted(admission.try_admit()), [job("b")], catch_all=True)
    assert isinstance(results[0], AgentError) and results[0].code == "internal"
    assert admission.slot.running == 0


def test_runner_releases_the_slot_when_finishing_fails() -> None:
    admission = Admission(JobSlot(1))

    def finish(_: Any) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        Runner(FakePipeline(), 10.0).run(admitted(admission.try_admit()), [job("a")], finish=finish)
    assert admission.slot.running == 0


def test_runner_call_bounds_other_heavy_work_and_releases() -> None:
    admission = Admission(JobSlot(1))
    runner = Runner(None, 10.0)
    answered: list[float] = []
    left = runner.call(admitted(admission.try_admit()), "req-1", lambda: deadline.bounded(1e9), finish=answered.append)
    assert 9 < left <= 10 and answered == [left]
    with pytest.raises(ValueError):
        runner.call(admitted(admission.try_admit()), "req-2", lambda: int("x"))
    assert admission.slot.running == 0
