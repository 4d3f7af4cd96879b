"""The inbox's finish protocol under a crash at every one of its steps (agent/sources/inbox.py).

A kill -9 is played in-process: the n-th filesystem call of a finish raises an exception that no
cleanup in the agent catches, as if the process had died right there; a new `Inbox` on the same
folders then starts the way a restarted agent does. For every n the file must end in exactly one
place: either still claimed (its job runs again under the same job id) or finished with its
complete record, and no bookkeeping file may be left behind. The end-to-end kill -9 tests
(tests/e2e/test_inbox.py, tests/e2e/test_kill9_recovery.py) hit these windows only by chance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import agent.sources.inbox as inbox_module
from agent.sources.inbox import Claimed, Inbox
from agent.sources.inbox_folders import INTENT
from agent.settings import InboxSettings

AUDIO = b"RIFF-not-really-audio" * 50
RECORD = {"job_id": "20260101T000000-0000abcd", "source": {"kind": "inbox", "name": "a.wav"}, "transcript": "x"}
JOB_ID = RECORD["job_id"]
#: The calls a finish makes that change the disk (or may be where a process dies).
STEPS = ("open", "write", "fsync", "close", "rename", "unlink")


class Killed(BaseException):
    """Not an Exception: the agent's own error handling must not see it, as with a real kill."""


class DyingOs:
    """`os` for agent.inbox, dying at the `at`-th call of a step (never when `at` is None)."""

    def __init__(self, at: int | None) -> None:
        self._at = at
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in STEPS:
            return real

        def step(*args: Any, **kwargs: Any) -> Any:
            if self.calls == self._at:
                raise Killed(name)
            self.calls += 1
            return real(*args, **kwargs)
        return step


def new_inbox(root: Path, keep_processed: bool = True) -> Inbox:
    return Inbox(InboxSettings(path=str(root / "inbox")), on_ready=lambda: None, keep_processed=keep_processed)


def claim_one(root: Path) -> tuple[Inbox, Claimed]:
    """A started inbox that has claimed `a.wav` under JOB_ID, as the feeder does before a job."""
    box = new_inbox(root)
    box.start()
    box.stop()
    (box.path / "a.wav").write_bytes(AUDIO)
    claimed = box.claim("a.wav")
    assert claimed is not None
    box.keep_job_id(claimed, JOB_ID)
    return box, claimed


def finish_dying_at(monkeypatch: pytest.MonkeyPatch, box: Inbox, claimed: Claimed, ok: bool,
                    at: int | None) -> int:
    """Run a finish that dies at its `at`-th step; returns how many steps it took."""
    dying = DyingOs(at)
    monkeypatch.setattr(inbox_module, "os", dying)
    try:
        box.finish(claimed, RECORD, ok)
    except Killed:
        pass
    finally:
        monkeypatch.setattr(inbox_module, "os", os)
    return dying.calls


def restart(root: Path, keep_processed: bool = True) -> tuple[Inbox, list[Claimed]]:
    box = new_inbox(root, keep_processed)
    leftovers = box.start()
    box.stop()
    return box, leftovers


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def steps_of_a_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ok: bool, keep: bool) -> int:
    box, claimed = claim_one(tmp_path / "count")
    box.keep_processed = keep
    return finish_dying_at(monkeypatch, box, claimed, ok, at=None)


@pytest.mark.parametrize("ok", [True, False], ids=["processed", "failed"])
def test_a_crash_at_any_step_of_a_finish_reruns_the_job_or_completes_the_finish(tmp_path, monkeypatch, ok):
    steps = steps_of_a_finish(tmp_path, monkeypatch, ok, keep=True)
    assert steps >= 5
    outcomes = set()
    for at in range(steps + 1):
        root = tmp_path / f"crash-{at}"
        box, claimed = claim_one(root)
        finish_dying_at(monkeypatch, box, claimed, ok, at)
        box, leftovers = restart(root)
        dest, other = (box.processed, box.failed) if ok else (box.failed, box.processed)
        assert files(other) == []
        if leftovers:   # not finished: the job runs again, under its job id, and finishes once
            outcomes.add("rerun")
            assert [(c.original, c.job_id) for c in leftovers] == [("a.wav", JOB_ID)], at
            assert files(dest) == [], (at, files(dest))   # nothing half-written left beside it
            box.finish(leftovers[0], RECORD, ok)
        else:
            outcomes.add("completed")
        record = "a.wav" + (".json" if ok else ".error.json")
        assert files(dest) == sorted(["a.wav", record]), (at, files(dest))
        assert (dest / "a.wav").read_bytes() == AUDIO
        assert json.loads((dest / record).read_text()) == RECORD
        assert files(box.processing) == [], (at, files(box.processing))
    assert outcomes == {"rerun", "completed"}


def test_a_crash_while_deleting_a_processed_spool_file_reruns_or_is_done(tmp_path, monkeypatch):
    steps = steps_of_a_finish(tmp_path, monkeypatch, ok=True, keep=False)
    assert steps == 2, "one unlink for the audio, one for its job id: no fsync"
    for at in range(steps + 1):
        root = tmp_path / f"crash-{at}"
        box, claimed = claim_one(root)
        box.keep_processed = False
        finish_dying_at(monkeypatch, box, claimed, True, at)
        box, leftovers = restart(root, keep_processed=False)
        if at == 0:
            assert [(c.original, c.job_id) for c in leftovers] == [("a.wav", JOB_ID)]
            box.finish(leftovers[0], RECORD, True)
        else:
            assert leftovers == []
        assert files(box.processing) == [] and files(box.processed) == [] and files(box.failed) == []


def test_the_only_fsync_of_a_finish_is_the_record_before_the_audio_moves(tmp_path, monkeypatch):
    box, claimed = claim_one(tmp_path)
    calls: list[str] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            real = getattr(os, name)
            if name in ("fsync", "rename"):
                return lambda *a, **k: (calls.append(name), real(*a, **k))[1]
            return real
    monkeypatch.setattr(inbox_module, "os", Recording())
    box.finish(claimed, RECORD, True)
    assert calls == ["fsync", "rename", "rename"]


def test_two_files_of_the_same_name_finish_side_by_side(tmp_path):
    box, first = claim_one(tmp_path)
    (box.path / "a.wav").write_bytes(AUDIO)
    second = box.claim("a.wav")
    assert second is not None and second.path.name == "a-1.wav"
    assert box.finish(first, RECORD, True).name == "a.wav"
    assert box.finish(second, RECORD, True).name == "a-1.wav"
    assert files(box.processed) == ["a-1.wav", "a-1.wav.json", "a.wav", "a.wav.json"]


def test_an_intent_left_by_an_earlier_version_is_dropped_and_its_file_runs_again(tmp_path):
    """An earlier version's intent names its destination folder: no path written in a file is
    trusted, so the intent is dropped unread and its file, still claimed, runs again."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text("canary")
    box, claimed = claim_one(tmp_path)
    intent = claimed.path.with_name(claimed.path.name + INTENT)
    intent.write_text(json.dumps({"dest": str(victim), "final": "ld.so.preload", "record_name": "x.json",
                                  "record": RECORD}))
    box, leftovers = restart(tmp_path)
    assert [(c.original, c.job_id) for c in leftovers] == [("a.wav", JOB_ID)]
    assert files(victim) == ["secret.txt"] and files(box.processed) == []
    assert files(box.processing) == [".a.wav.job", "a.wav"]
