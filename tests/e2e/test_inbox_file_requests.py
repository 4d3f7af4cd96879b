"""`transcribe {"file": ...}` goes through the inbox source's own path: the file a request names is
claimed, run and finished exactly as a dropped file, under the job id it was queued with."""

from __future__ import annotations

from tests.support.inbox import drop, records
from tests.support.wavs import tone_wav


def test_a_file_request_runs_the_queued_file_under_its_job_id_and_finishes_it_the_inbox_way(make_agent, probe):
    agent = make_agent().start(probe)
    probe.request(agent.root, "pause")   # the files wait in the inbox, announced as queued
    drop(agent.inbox, "good.wav", tone_wav(0.3))
    drop(agent.inbox, "bad.wav", b"RIFF" + bytes(60))
    queued = {m.json["source"]["name"]: m.json["job_id"] for m in probe.wait_for(
        f"{agent.root}/event/job", lambda m: m.json["state"] == "queued", count=2, what="both files queued")}

    good = probe.request(agent.root, "transcribe", {"file": "good.wav"})
    assert good["status"] == "ok" and good["data"]["job_id"] == queued["good.wav"], good
    bad = probe.request(agent.root, "transcribe", {"file": "bad.wav"})
    assert bad["status"] == "error" and bad["error"]["code"] == "corrupt", bad

    done = records(agent.inbox / "processed")["good.wav.json"]
    assert done["job_id"] == queued["good.wav"] and done["source"] == {"kind": "request", "name": "good.wav"}
    failed = records(agent.inbox / "failed", ".error.json")["bad.wav.error.json"]
    assert failed["job_id"] == queued["bad.wav"] and failed["source"] == {"kind": "request", "name": "bad.wav"}
    assert failed["code"] == "corrupt"
    # No orphaned `queued`: every job announced has ended, under the same id.
    ended = {m.json["job_id"]: m.json["state"] for m in probe.on(f"{agent.root}/event/job")
             if m.json["state"] in ("done", "failed")}
    assert ended == {queued["good.wav"]: "done", queued["bad.wav"]: "failed"}
