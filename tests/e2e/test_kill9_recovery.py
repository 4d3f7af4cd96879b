"""kill -9 at random moments while 200 files are processed: nothing lost, duplicates bounded.

The figures the test prints fill the table in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from tests.support.wait import all_delivered, wait_until


def finished(inbox: Path) -> dict[str, list[str]]:
    """Audio name -> the record files that name it, over processed/ and failed/."""
    out: dict[str, list[str]] = {}
    for folder, suffix in (("processed", ".json"), ("failed", ".error.json")):
        d = inbox / folder
        if not d.exists():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") or not p.name.endswith(suffix):
                continue
            source = json.loads(p.read_text()).get("source", {}).get("name") or p.name[: -len(suffix)]
            out.setdefault(source, []).append(f"{folder}/{p.name}")
    return out


def test_kill9_at_random_moments_during_200_files(kill_rig, probe):
    rig = kill_rig(prefix="k", count=200, subscribe=("voice/+/event/transcript", "voice/+/availability"),
                   tone_s=lambda i: 0.05 + (i % 50) / 1000)   # 50 distinct sounds: cache hits too
    seed, rng, sub, agent, staging, names = rig.seed, rig.rng, rig.sub, rig.agent, rig.staging, rig.names

    def feed() -> None:   # files keep arriving (25/s) while the agent is being killed
        for name in names:
            os.rename(staging / name, agent.inbox / name)
            time.sleep(0.04)   # pacing: the arrival rate, not a wait for anything

    feeder = threading.Thread(target=feed, daemon=True)
    kills = 0
    t0 = time.monotonic()
    feeder.start()
    while kills < 20 and (feeder.is_alive() or kills < 5):
        agent.start(sub)
        time.sleep(rng.uniform(0.05, 0.8))   # the random moment of the kill is the point of the test
        if len(finished(agent.inbox)) >= len(names):
            break
        agent.kill9()
        kills += 1
    feeder.join()
    if not agent.alive():
        agent.start(sub)
    wait_until(lambda: len(finished(agent.inbox)) >= len(names), 120, "every file finished")
    sub.wait_for(f"{agent.root}/event/transcript", lambda m: True, count=len(names), timeout=60,
                 what="at least one transcript per file")
    wait_until(lambda: {m.json["source"]["name"] for m in sub.on(f"{agent.root}/event/transcript")}
               >= set(names), 60, "a transcript for every file")
    all_delivered(probe, agent.root)   # nothing left in the outbox that could still be resent
    rig.mark()                         # and all it sent has reached the subscriber
    records = finished(agent.inbox)
    events = [m.json for m in sub.on(f"{agent.root}/event/transcript")]
    transcripts = [e["source"]["name"] for e in events]
    duplicates = len(transcripts) - len(set(transcripts))
    resent = len(events) - len({e["job_id"] for e in events})   # the same event sent again
    print(f"\nkill -9 x{kills} (seed {seed}) over {time.monotonic() - t0:.1f}s: {len(records)} files finished, "
          f"{len(transcripts)} transcript events, {duplicates} duplicates (at-least-once), {resent} of them "
          f"with the job_id of an earlier one (removed by job_id dedupe), {duplicates - resent} with a new one")
    # A job re-run after a kill keeps its job_id: deduplicating by job_id leaves exactly one
    # transcript per file, the one whose job_id is in the file's record.
    final_ids = {json.loads((agent.inbox / r[0]).read_text())["job_id"] for r in records.values()}
    assert final_ids == {e["job_id"] for e in events}, "a re-run after a kill must keep its job_id"
    assert sorted(records) == names, sorted(set(records) ^ set(names))[:10]
    assert all(len(r) == 1 for r in records.values()), {k: v for k, v in records.items() if len(v) != 1}
    assert all(r[0].startswith("processed/") for r in records.values()), \
        {k: v for k, v in records.items() if not v[0].startswith("processed/")}
    processed = sorted(p.name for p in (agent.inbox / "processed").iterdir() if not p.name.endswith(".json"))
    assert processed == names   # each audio file once, none renamed name-1.wav
    assert not [p for p in (agent.inbox / "failed").iterdir()], "nothing should fail"
    assert not list((agent.inbox / ".processing").iterdir())
    assert not [p for d in ("processed", "failed") for p in (agent.inbox / d).glob(".*")], "stale temp files"
    assert not [p for p in agent.inbox.iterdir() if p.is_file()]
    assert set(transcripts) == set(names)
    assert kills >= 3, "the run finished before enough kills happened; nothing was proven"
