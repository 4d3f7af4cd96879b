"""Durable on power loss (issue 15, item 3).

A power cut cannot be staged in a test; what makes one harmless can be:
- the ordering: a file reaches processed/ only after its events are in the outbox. The agent is
  SIGKILLed at random moments right around inbox finishes (the moments a new record appears), and
  after every kill each record in processed/ must have its events either still in the outbox
  database or already delivered to a subscriber;
- the durability of each stored event: with synchronous=FULL SQLite fsyncs the WAL at every
  commit, so each `put` costs an fsync (counted with strace); NORMAL would cost none, and a power
  cut could roll those commits back.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.wait import wait_until


def stored_events(db_path: Path) -> list[dict]:
    """Event bodies still in the outbox (the agent is dead: nothing else has the file open)."""
    if not db_path.exists():
        return []
    db = sqlite3.connect(str(db_path))
    try:
        return [dict(json.loads(payload), _topic=topic)
                for topic, payload in db.execute("SELECT topic, payload FROM events")]
    finally:
        db.close()


def required_events(record: dict) -> set[tuple[str, str]]:
    job = record["job_id"]
    need = {("transcript", job), ("job:done", job)}
    if record.get("summary"):
        need.add(("summary", job))
    return need


def event_keys(bodies: list[dict], topics: list[str]) -> set[tuple[str, str]]:
    keys = set()
    for body, topic in zip(bodies, topics):
        kind = topic.rsplit("/", 1)[1]
        if kind == "job":
            kind = f"job:{body.get('state')}"
        keys.add((kind, body.get("job_id")))
    return keys


def test_sigkill_around_inbox_finishes_never_leaves_a_processed_file_without_its_events(kill_rig):
    rig = kill_rig(prefix="p", count=60, subscribe=("voice/+/event/#", "voice/+/availability"),
                   tone_s=lambda i: 0.05 + i / 1000)
    seed, rng, sub, agent, staging, names = rig.seed, rig.rng, rig.sub, rig.agent, rig.staging, rig.names
    db_path = Path(agent.config["state_dir"]) / "outbox.sqlite3"
    processed = agent.inbox / "processed"
    kills = checked = 0
    for name in names:   # all waiting: the agent finishes one file after another, fast
        os.rename(staging / name, agent.inbox / name)
    while len(list(processed.glob("*.wav.json"))) < len(names) and kills < 15:
        agent.start(sub)
        before = len(list(processed.glob("*.wav.json"))) if processed.exists() else 0
        # Kill within a few milliseconds of a record appearing: around an inbox finish.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(list(processed.glob("*.wav.json"))) <= before:
            time.sleep(0.0005)   # a tight poll for the moment a record appears
        time.sleep(rng.uniform(0, 0.01))   # the random moment of the kill is the point of the test
        agent.kill9()
        kills += 1
        rig.mark()   # every event the broker acknowledged before the kill has reached the subscriber
        records = [json.loads(p.read_text()) for p in processed.glob("*.wav.json")]
        stored = stored_events(db_path)
        have = event_keys(stored, [e["_topic"] for e in stored])
        msgs = sub.on("voice/+/event/#")
        have |= event_keys([m.json for m in msgs], [m.topic for m in msgs])
        for record in records:
            missing = required_events(record) - have
            assert not missing, (f"kill {kills} (seed {seed}): {record['source']['name']} is in processed/ "
                                 f"but these events are neither stored nor delivered: {missing}")
            checked += 1
    agent.start(sub)
    wait_until(lambda: len(list(processed.glob("*.wav.json"))) == len(names), 60, "every file processed")
    print(f"\n{kills} kills around inbox finishes (seed {seed}); {checked} record checks, none missing an event")
    assert kills >= 5, "the run finished before enough kills happened; nothing was proven"


COUNT_FSYNCS = r"""
import sys
from pathlib import Path
from agent.mqtt.outbox import Outbox
outbox = Outbox(Path(sys.argv[1]), max_messages=10_000, max_bytes=10_000_000)
ids = [outbox.put("voice/dev/event/job", b'{"job_id": "j", "state": "done"}') for _ in range(int(sys.argv[2]))]
sys.stdout.write("stored\n"); sys.stdout.flush()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (scripts/setup-system --test)")
def test_every_stored_event_is_fsynced_before_put_returns(tmp_path):
    """Each put is its own durable commit: at least one fsync/fdatasync per put (NORMAL: none)."""
    def fsyncs(puts: int) -> int:
        db = tmp_path / f"outbox-{puts}.sqlite3"
        out = subprocess.run(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", sys.executable, "-c",
                              COUNT_FSYNCS, str(db), str(puts)], capture_output=True, text=True, cwd=REPO,
                             timeout=60)
        assert out.returncode == 0 and "stored" in out.stdout, out.stderr[-2000:]
        total = 0
        for line in out.stderr.splitlines():
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync"):
                total += int(parts[3])
        return total

    base, more = fsyncs(1), fsyncs(21)
    assert more - base >= 20, f"20 more puts cost only {more - base} more fsyncs"
