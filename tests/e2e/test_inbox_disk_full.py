"""The inbox's disk full at the finish: the file keeps its job id, and is finished once space returns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.disk import fill, small_tmpfs
from tests.support.inbox import drop, records, wait_files
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav


@pytest.fixture
def small_inbox(tmp_path):
    """A 2 MB tmpfs as the inbox (root only)."""
    with small_tmpfs(tmp_path / "inbox") as inbox:
        yield inbox


def transcripts_of(probe, agent, name: str) -> list[dict]:
    return [m.json for m in probe.on(f"{agent.root}/event/transcript") if m.json["source"]["name"] == name]


def claimed_on_a_full_disk(probe, agent, name: str) -> tuple[str, Path]:
    """Queue `name` while paused, fill the disk, resume: its job runs, and its finish finds no space."""
    probe.request(agent.root, "pause")
    drop(agent.inbox, name, tone_wav(0.3))
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "queued"
                   and m.json["source"]["name"] == name, what=f"{name} queued")
    filler = fill(agent.inbox, ".filler")   # hidden: the inbox never takes it
    refused = agent.log().count("No space left on device")
    probe.request(agent.root, "resume")
    job_id = probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "done"
                            and m.json["source"]["name"] == name, what=f"{name} done")[-1].json["job_id"]
    wait_until(lambda: agent.log().count("No space left on device") > refused, 10,
               "the finish refused for lack of space")
    assert (agent.inbox / ".processing" / name).is_file()
    return job_id, filler


def full_disk_agent(make_agent, probe, inbox: Path):
    return make_agent({"inbox": {"path": str(inbox), "settle_ms": 200},
                       "memory": {"min_disk_free_mb": 0.25, "interval_s": 0.3}}).start(probe)


def test_a_file_killed_while_its_finish_found_no_space_reruns_under_the_same_job_id(make_agent, probe, small_inbox):
    agent = full_disk_agent(make_agent, probe, small_inbox)
    job_id, filler = claimed_on_a_full_disk(probe, agent, "a.wav")
    agent.kill9()
    filler.unlink()
    agent.start(probe)
    wait_files(agent.inbox / "processed", "a.wav.json", 1, timeout=20)
    assert records(agent.inbox / "processed")["a.wav.json"]["job_id"] == job_id
    assert [t["job_id"] for t in transcripts_of(probe, agent, "a.wav")] == [job_id, job_id]


def test_a_finish_refused_by_a_full_disk_is_done_when_space_returns_without_a_rerun(make_agent, probe, small_inbox):
    agent = full_disk_agent(make_agent, probe, small_inbox)
    job_id, filler = claimed_on_a_full_disk(probe, agent, "b.wav")
    disk = f"{agent.root}/alert/disk"
    wait_until(lambda: [m.payload for m in probe.on(disk)][-1:] not in ([], [b""]), 10, "disk alert raised")
    filler.unlink()
    wait_until(lambda: probe.on(disk)[-1].payload == b"", 10, "disk alert cleared")
    wait_files(agent.inbox / "processed", "b.wav.json", 1, timeout=10)
    assert records(agent.inbox / "processed")["b.wav.json"]["job_id"] == job_id
    assert [t["job_id"] for t in transcripts_of(probe, agent, "b.wav")] == [job_id]
    assert sorted(os.listdir(agent.inbox / ".processing")) == []
