"""Which events the one sink stores with an fsync (agent.mqtt.events: a group commit per job).

A job's progress rides on its last event: only `done` / `failed` (and anything that is not job
progress) must be fsynced before `emit` returns, since the inbox finishes a file right after.
"""

from __future__ import annotations

from typing import Any

from agent.mqtt.events import EventSink
from agent.mqtt.topics import Topics


class RecordingPublisher:
    def __init__(self) -> None:
        self.stored: list[tuple[str, bool]] = []

    def emit(self, topic: str, body: dict, *, durable: bool = True) -> None:
        self.stored.append((topic.rsplit("/", 1)[1] + (f":{body['state']}" if "state" in body else ""), durable))


def _emit_all(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, bool]]:
    pub = RecordingPublisher()
    sink = EventSink(pub, Topics("voice", "dev"))  # type: ignore[arg-type]
    for event, body in events:
        sink.emit(event, body)
    return pub.stored


def test_a_jobs_progress_is_lazy_and_its_last_event_durable() -> None:
    stored = _emit_all([("vad", {"event": "speech_end"}), ("job", {"state": "queued"}),
                        ("job", {"state": "running"}), ("transcript", {"text": "hi"}),
                        ("summary", {"text": "hi"}), ("job", {"state": "done"})])
    assert stored == [("vad", False), ("job:queued", False), ("job:running", False), ("transcript", False),
                      ("summary", False), ("job:done", True)]


def test_failed_rejected_alerts_and_unknown_events_are_durable_at_once() -> None:
    stored = _emit_all([("job", {"state": "failed"}), ("job", {"state": "rejected"}), ("job", {}),
                        ("alert", {"kind": "disk"}), ("something_new", {})])
    assert all(durable for _, durable in stored), stored
