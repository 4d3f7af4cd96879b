"""Retained `last/*` copies under a burst of jobs (agent/ops/last_values.py): the transcript and
summary copies go out from their own thread, the latest of each name per round, never an older
one after a newer; speech copies go out at once, each one."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from agent.mqtt.topics import Topics
from agent.ops.last_values import LastValues


class FakeLink:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected.set()
        self.sent: list[tuple[str, dict[str, Any], str]] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        assert retain and qos == 1
        self.sent.append((topic.rsplit("/", 1)[1], json.loads(payload), threading.current_thread().name))


def _wait(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_a_burst_of_transcripts_sends_the_latest_and_never_an_older_one_after_it() -> None:
    link = FakeLink()
    last = LastValues(Topics("voice", "dev"))
    last.attach(link)
    for i in range(50):
        last.observe("transcript", {"job_id": f"j{i:02d}", "text": f"text {i}"})
        last.observe("summary", {"job_id": f"j{i:02d}", "text": f"summary {i}"})
    assert _wait(lambda: any(n == "transcript" and b["job_id"] == "j49" for n, b, _ in link.sent)
                 and any(n == "summary" and b["job_id"] == "j49" for n, b, _ in link.sent))
    # A later value as the marker (not a sleep): once it is out, an older copy sent after j49
    # would sit between the two.
    last.observe("transcript", {"job_id": "j50", "text": "text 50"})
    last.observe("summary", {"job_id": "j50", "text": "summary 50"})
    assert _wait(lambda: {("transcript", "j50"), ("summary", "j50")} <= {(n, b["job_id"]) for n, b, _ in link.sent})
    for name in ("transcript", "summary"):
        ids = [b["job_id"] for n, b, _ in link.sent if n == name]
        assert ids == sorted(ids) and ids[-1] == "j50", ids
        assert len(ids) < 50, f"every {name} copy was sent: nothing coalesced"
    assert {t for _, _, t in link.sent} == {"last-values"}   # never on the job's thread


def test_speech_copies_go_out_at_once_each_one() -> None:
    link = FakeLink()
    last = LastValues(Topics("voice", "dev"))
    last.attach(link)
    last.observe("vad", {"event": "speech_start", "segment_id": "s1"})
    last.observe("vad", {"event": "speech_end", "segment_id": "s1"})
    assert [(n, b["speaking"]) for n, b, _ in link.sent] == [("speech", True), ("speech", False)]


def test_copies_made_while_offline_go_out_on_connect() -> None:
    link = FakeLink()
    link.connected.clear()
    last = LastValues(Topics("voice", "dev"))
    last.attach(link)
    last.observe("transcript", {"job_id": "j1", "text": "hello"})
    time.sleep(0.2)
    assert link.sent == []
    link.connected.set()
    last.on_connect()
    assert {(n, b.get("job_id")) for n, b, _ in link.sent} >= {("transcript", "j1"), ("speech", None)}
