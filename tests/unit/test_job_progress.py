"""Progress of long jobs (agent.jobs.progress): the rate limit, the bounded text, the running list."""

from __future__ import annotations

from typing import Any

from agent.jobs.progress import JobProgress, bounded_text
from agent.mqtt.publisher import RetainedState

SOURCE = {"kind": "inbox", "name": "talk.wav"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def board(interval_s: float = 2.0, **kwargs: Any) -> tuple[JobProgress, list[dict[str, Any]], Clock]:
    sent: list[dict[str, Any]] = []
    clock = Clock()
    return JobProgress(sent.append, interval_s, clock=clock, wall=lambda: 0.0, **kwargs), sent, clock


def test_at_most_one_event_per_interval_and_fractions_never_go_back() -> None:
    progress, sent, clock = board(2.0)
    progress.started("j1", SOURCE)
    report = progress.reporter("j1")
    assert report is not None
    # 40 reports over 10 s, one every 0.25 s: at most one per 2 s leaves, the first at once
    for i in range(40):
        clock.now += 0.25
        report(0.5 if i == 20 else i / 40, f"word{i}")
    assert len(sent) == 5
    assert sent[0]["elapsed_s"] == 0.2 and sent[0]["text"] == "word0"
    fractions = [body["fraction"] for body in sent]
    assert fractions == sorted(fractions) and fractions[-1] < 1
    assert {body["job_id"] for body in sent} == {"j1"} and sent[0]["source"] == SOURCE
    assert all(round(b["elapsed_s"] - a["elapsed_s"], 1) >= 2.0 for a, b in zip(sent, sent[1:]))


def test_rate_limit_is_per_job_and_zero_turns_events_off() -> None:
    progress, sent, clock = board(2.0)
    progress.started("a", SOURCE)
    progress.started("b", SOURCE)
    assert progress.report("a", 0.1, "x") and progress.report("b", 0.1, "y")
    assert not progress.report("a", 0.2, "x x")
    progress.report("gone", 0.5, "never started")   # dropped: not a running job
    assert [b["job_id"] for b in sent] == ["a", "b"]
    progress.set_interval(0)
    clock.now += 60
    assert progress.reporter("a") is None and not progress.report("a", 0.9, "x")
    assert len(sent) == 2


def test_text_is_bounded_with_a_flag_keeping_whole_words_of_the_end() -> None:
    text = " ".join(f"w{i}" for i in range(1000))
    kept, cut = bounded_text(text, 50)
    assert cut and len(kept) <= 50 and text.endswith(kept) and kept.split()[0].startswith("w")
    assert f" {kept.split()[0]} " in f" {text} "          # a whole word, not a tail of one
    assert bounded_text("short text", 50) == ("short text", False)
    progress, sent, _ = board(1.0, text_max_chars=50)
    progress.started("j", SOURCE)
    progress.report("j", 0.5, text)
    assert sent[0]["text"] == kept and sent[0]["text_truncated"] is True


def test_running_jobs_show_elapsed_time_and_last_fraction_until_they_end() -> None:
    progress, _, clock = board(2.0)
    progress.started("j1", SOURCE)
    clock.now += 3.0
    progress.report("j1", 0.25, "hello")
    clock.now += 1.5
    [job] = progress.running()
    assert job == {"job_id": "j1", "source": SOURCE, "started_at": "1970-01-01T00:00:00.000Z",
                   "elapsed_s": 4.5, "fraction": 0.25}
    progress.ended("j1")
    progress.ended("j1")   # idempotent
    assert progress.running() == []


def test_retained_state_ignores_elapsed_time_but_not_a_new_fraction() -> None:
    progress, _, clock = board(2.0)
    progress.started("j1", SOURCE)
    sent: list[dict[str, Any]] = []
    state = RetainedState(lambda: {"jobs": {"active": progress.running()}}, lambda s: sent.append(s) or True)
    state.publish_if_changed()
    for _ in range(5):        # the main loop's ticks: only the elapsed time changes
        clock.now += 1.0
        state.publish_if_changed()
    assert len(sent) == 1
    progress.report("j1", 0.5, "half")
    state.publish_if_changed()
    assert len(sent) == 2 and sent[-1]["jobs"]["active"][0]["fraction"] == 0.5


def test_retained_state_is_not_resent_when_only_which_job_runs_changes() -> None:
    """Jobs that follow each other without a gap (a queue of short files) send no state each."""
    progress, _, clock = board(2.0)
    sent: list[dict[str, Any]] = []
    state = RetainedState(lambda: {"jobs": {"running": len(progress.running()), "active": progress.running()}},
                          lambda s: sent.append(s) or True)
    for i in range(5):
        progress.ended(f"j{i - 1}")
        progress.started(f"j{i}", {"kind": "inbox", "name": f"f{i}.wav"})
        clock.now += 0.5
        state.publish_if_changed()
    assert len(sent) == 1 and sent[0]["jobs"]["active"][0]["job_id"] == "j0"
    progress.ended("j4")
    state.publish_if_changed()
    assert len(sent) == 2 and sent[-1]["jobs"]["active"] == []
