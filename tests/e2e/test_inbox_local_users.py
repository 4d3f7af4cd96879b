"""A local user who can write the inbox folder (it is group-writable) is an attacker too.

Each test plants what such a user could: one of the agent's own folders swapped for a symlink to a
"victim" folder with canary files (before a restart, or while the agent runs), an earlier version's
finish intent naming a destination outside, a hard link to a file the user was never given. The
agent must refuse, say so, and leave every canary where and as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.inbox import drop, records, wait_files
from tests.support.wavs import tone_wav

SECRET = b"canary: never moved, never read into a transcript"


def victim_folder(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_bytes(SECRET)
    (victim / "outbox.sqlite3").write_bytes(b"SQLite format 3\x00" + SECRET)
    return victim


def untouched(victim: Path) -> bool:
    return (sorted(os.listdir(victim)) == ["outbox.sqlite3", "secret.txt"]
            and (victim / "secret.txt").read_bytes() == SECRET)


def inbox_alert(probe, agent, level: str) -> dict:
    if level == "ok":
        probe.wait_for(f"{agent.root}/alert/inbox", lambda m: m.payload == b"", timeout=15, what="inbox alert cleared")
        return {}
    return probe.wait_for(f"{agent.root}/alert/inbox", lambda m: m.payload and m.json["level"] == level,
                          timeout=15, what=f"inbox alert {level}")[-1].json


def toggle_inbox(probe, agent) -> None:
    """`config/set inbox.enabled` off and on: the inbox starts again (as after a restart)."""
    for enabled in (False, True):
        answer = probe.request(agent.root, "config/set", {"config": {"inbox": {"enabled": enabled}}})
        assert answer["status"] == "ok", answer


@pytest.mark.parametrize("folder,how", [(".processing", "symlink"), ("failed", "symlink"), ("processed", "symlink"),
                                        ("failed", "foreign owner")])
def test_an_own_folder_that_is_not_ours_stops_the_inbox_with_an_alert_and_nothing_moves(
        make_agent, probe, tmp_path, folder, how):
    agent = make_agent().start(probe)
    victim = victim_folder(tmp_path)
    own = agent.inbox / folder
    os.rename(own, agent.inbox / f"{folder}.old")
    if how == "symlink":
        os.symlink(victim, own)
    else:   # a real folder, but made by someone else before the agent (re)started
        own.mkdir()
        os.chown(own, 65534, 65534)
    toggle_inbox(probe, agent)
    alert = inbox_alert(probe, agent, "critical")
    assert str(own) in alert["error"] and alert["source"] == "inbox", alert
    # The inbox is stopped: a file named in a request is refused, nothing is claimed or moved.
    drop(agent.inbox, "after.wav", tone_wav(0.2))
    answer = probe.request(agent.root, "transcribe", {"file": "after.wav"})
    assert answer["status"] == "error" and answer["error"]["code"] == "bad_request", answer
    assert untouched(victim), sorted(os.listdir(victim))
    assert (agent.inbox / "after.wav").is_file()
    assert probe.request(agent.root, "ping")["status"] == "ok"

    # Fixed by the owner: the next start clears the alert and takes the waiting file.
    if own.is_symlink():
        own.unlink()
    else:
        own.rmdir()
    os.rename(agent.inbox / f"{folder}.old", own)
    toggle_inbox(probe, agent)
    inbox_alert(probe, agent, "ok")
    wait_files(agent.inbox / "processed", "after.wav.json", 1, timeout=15)
    assert untouched(victim)


@pytest.mark.parametrize("folder", ["failed", "processed"])
def test_a_folder_swapped_for_a_symlink_while_running_changes_nothing(make_agent, probe, tmp_path, folder):
    """The folders are used through the descriptors opened at start: the swap is never followed."""
    agent = make_agent().start(probe)
    victim = victim_folder(tmp_path)
    own = agent.inbox / folder
    os.rename(own, agent.inbox / f"{folder}.real")
    os.symlink(victim, own)
    drop(agent.inbox, "x.wav", tone_wav(0.3) if folder == "processed" else b"RIFF" + bytes(60))
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] in ("done", "failed"), what="job ended")
    suffix = ".json" if folder == "processed" else ".error.json"
    wait_files(agent.inbox / f"{folder}.real", f"x.wav{suffix}", 1, timeout=15)
    assert (agent.inbox / f"{folder}.real" / "x.wav").is_file()
    assert untouched(victim), sorted(os.listdir(victim))


def test_an_earlier_versions_finish_intent_never_moves_a_file_where_it_says(make_agent, probe, tmp_path):
    """An old-format `*.finish.json` names its destination: it is dropped unread; its file runs again."""
    victim = victim_folder(tmp_path)
    agent = make_agent()
    processing = agent.inbox / ".processing"
    processing.mkdir(parents=True)
    (processing / "a.wav").write_bytes(tone_wav(0.3))
    (processing / ".a.wav.job").write_text("20260101T000000-0000abcd")
    plan = {"dest": str(victim), "final": "ld.so.preload", "record_name": "ld.so.preload.json",
            "record": {"job_id": "x", "transcript": "attacker"}}
    (processing / "a.wav.finish.json").write_text(json.dumps(plan))
    agent.start(probe)
    wait_files(agent.inbox / "processed", "a.wav.json", 1, timeout=15)
    record = records(agent.inbox / "processed")["a.wav.json"]
    assert record["job_id"] == "20260101T000000-0000abcd" and record["transcript"] != "attacker"
    assert untouched(victim), sorted(os.listdir(victim))
    assert os.listdir(processing) == []


def test_a_hard_linked_file_is_refused_with_a_code_and_never_read(make_agent, probe, tmp_path):
    victim = victim_folder(tmp_path)
    secret_wav = victim / "secret.wav"
    secret_wav.write_bytes(tone_wav(0.4))
    before = secret_wav.read_bytes()
    agent = make_agent().start(probe)
    probe.request(agent.root, "pause")   # the request's file must still be waiting when asked for
    os.link(secret_wav, agent.inbox / "asked.wav")
    answer = probe.request(agent.root, "transcribe", {"file": "asked.wav"})
    assert answer["status"] == "error" and answer["error"]["code"] == "forbidden", answer
    assert "hard link" in answer["error"]["message"]
    probe.request(agent.root, "resume")
    os.link(secret_wav, agent.inbox / "dropped.wav")
    wait_files(agent.inbox / "failed", "dropped.wav.error.json", 1, timeout=15)
    errors = records(agent.inbox / "failed", ".error.json")
    assert {errors[n]["code"] for n in ("asked.wav.error.json", "dropped.wav.error.json")} == {"forbidden"}
    assert not probe.on(f"{agent.root}/event/transcript")
    assert secret_wav.read_bytes() == before and (victim / "secret.txt").read_bytes() == SECRET
