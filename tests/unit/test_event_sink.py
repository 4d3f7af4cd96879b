"""The one event sink (agent/mqtt/events.py): guards run before an event is stored, observers
after it, only for the event name they asked for (None: every event), in registration order."""

from __future__ import annotations

from typing import Any

from agent.mqtt.events import EventSink
from agent.mqtt.topics import Topics


class FakePublisher:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    def emit(self, topic: str, body: dict, durable: bool = True) -> None:
        self.log.append(("stored", topic))


def test_guards_then_store_then_matching_observers_in_order() -> None:
    log: list[tuple[str, Any]] = []
    sink = EventSink(FakePublisher(log), Topics("voice", "dev"))  # type: ignore[arg-type]
    sink.guard(lambda e, b: log.append(("guard", e)))
    sink.observe(None, lambda e, b: log.append(("every", e)))
    sink.observe("job", lambda e, b: log.append(("job", b["state"])))
    sink.emit("job", {"state": "running"})
    sink.emit("vad", {"event": "speech_start"})
    assert log == [("guard", "job"), ("stored", "voice/dev/event/job"), ("every", "job"), ("job", "running"),
                   ("guard", "vad"), ("stored", "voice/dev/event/vad"), ("every", "vad")]


def test_retarget_moves_the_topic() -> None:
    log: list[tuple[str, Any]] = []
    sink = EventSink(FakePublisher(log), Topics("voice", "dev"))  # type: ignore[arg-type]
    sink.retarget(Topics("home", "kitchen"))
    sink.emit("transcript", {"text": "hi"})
    assert log == [("stored", "home/kitchen/event/transcript")]


def test_a_guard_that_raises_stores_nothing() -> None:
    """A guard holds or stops the emitting thread before anything is stored (abandoned jobs)."""
    log: list[tuple[str, Any]] = []
    sink = EventSink(FakePublisher(log), Topics("voice", "dev"))  # type: ignore[arg-type]

    def stop(event: str, body: dict) -> None:
        raise SystemExit

    sink.guard(stop)
    try:
        sink.emit("summary", {})
    except SystemExit:
        pass
    assert log == []
