"""The alert board in process: events, repeats, the retained copy, offline changes and sweeps; the
outbox overflow and store-error alerts; the status line.
"""

from __future__ import annotations

import json
import threading
import types
from pathlib import Path
from typing import Any, Callable

import psutil

from agent.ops.alerts import AlertBoard, OutboxWatch
from agent.ops.readiness import status_line
from agent.mqtt.outbox import Outbox


class FakeLink:
    """Records publishes; `connected` like MqttLink's; route/unroute for the stale-alert sweep."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = threading.Event()
        if connected:
            self.connected.set()
        self.published: list[tuple[str, bytes, bool]] = []
        self.routes: dict[str, Callable] = {}

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, **_: Any) -> None:
        self.published.append((topic, payload, retain))

    def route(self, topic_filter: str, handler: Callable) -> None:
        self.routes[topic_filter] = handler

    def unroute(self, topic_filter: str, **_: Any) -> None:
        self.routes.pop(topic_filter, None)

    def retained_of(self, topic: str) -> bytes | None:
        found = [p for t, p, r in self.published if t == topic and r]
        return found[-1] if found else None


def make_board(link: FakeLink) -> tuple[AlertBoard, list[tuple[str, dict]]]:
    from agent.mqtt.topics import Topics
    events: list[tuple[str, dict]] = []
    board = AlertBoard(lambda event, body: events.append((event, body)), Topics("voice", "dev"))
    board.attach(link)
    return board, events


def test_alert_board_events_repeats_and_retained_copy() -> None:
    link = FakeLink()
    board, events = make_board(link)
    board.raise_("memory", "warning", {"used_percent": 81})
    board.raise_("memory", "critical", {"used_percent": 95})
    board.raise_("memory", "critical", {"used_percent": 96}, repeat=True)
    assert [(e["level"], e.get("repeat", False)) for _, e in events] == [
        ("warning", False), ("critical", False), ("critical", True)]
    kept = json.loads(link.retained_of("voice/dev/alert/memory"))
    assert kept["level"] == "critical" and kept["used_percent"] == 96 and "repeat" not in kept
    assert board.clear("memory", {"used_percent": 50})
    assert events[-1][1] == {"kind": "memory", "level": "ok", "used_percent": 50}
    assert link.retained_of("voice/dev/alert/memory") == b""
    assert not board.clear("memory"), "clearing twice publishes nothing"
    assert len(events) == 4


def test_alert_board_offline_changes_reach_the_broker_on_connect() -> None:
    link = FakeLink(connected=False)
    board, events = make_board(link)
    board.raise_("disk", "critical", {"free_mb": 1})
    board.raise_("engine", "critical", {"failures": 3})
    board.clear("engine")
    board.raise_("outbox", "warning", {"dropped": 5}, direct=True)
    assert link.published == [], "nothing is published while offline"
    assert [e["kind"] for _, e in events] == ["disk", "engine", "engine"], "the outbox alert bypasses the outbox"
    link.connected.set()
    board.on_connect()
    assert json.loads(link.retained_of("voice/dev/alert/disk"))["level"] == "critical"
    assert link.retained_of("voice/dev/alert/engine") == b"", "cleared while offline: emptied on connect"
    assert json.loads(link.retained_of("voice/dev/alert/outbox"))["dropped"] == 5
    direct = [json.loads(p) for t, p, r in link.published if t == "voice/dev/event/alert"]
    assert [(d["kind"], d["level"]) for d in direct] == [("outbox", "warning")]


def test_alert_board_sweeps_retained_alerts_left_by_an_earlier_run() -> None:
    link = FakeLink()
    board, _ = make_board(link)
    board.raise_("disk", "critical", {"free_mb": 1})
    board.on_connect()
    handler = link.routes["voice/dev/alert/+"]
    stale = types.SimpleNamespace(topic="voice/dev/alert/memory", payload=b'{"level":"critical"}', retain=True)
    current = types.SimpleNamespace(topic="voice/dev/alert/disk", payload=b'{"level":"critical"}', retain=True)
    live = types.SimpleNamespace(topic="voice/dev/alert/engine", payload=b'{"level":"critical"}', retain=False)
    for msg in (stale, current, live):
        handler(msg)
    assert link.retained_of("voice/dev/alert/memory") == b""
    assert json.loads(link.retained_of("voice/dev/alert/disk"))["level"] == "critical"
    assert link.retained_of("voice/dev/alert/engine") is None
    board.on_connect()
    assert len(link.routes) == 1, "swept on the first connect only"


def test_outbox_overflow_alert_never_goes_through_the_full_outbox(tmp_path: Path) -> None:
    """The App wiring in miniature: events go to the outbox, whose overflow raises the alert."""
    link = FakeLink()
    holder: dict[str, OutboxWatch] = {}
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_messages=10, max_bytes=10_000_000,
                    on_overflow=lambda dropped: holder["watch"].overflow(dropped))
    from agent.mqtt.topics import Topics
    board = AlertBoard(lambda event, body: outbox.put(f"voice/dev/event/{event}", json.dumps(body).encode()),
                       Topics("voice", "dev"))
    board.attach(link)
    watch = holder["watch"] = OutboxWatch(board, outbox)
    try:
        for i in range(50):
            outbox.put("voice/dev/event/job", json.dumps({"i": i}).encode())
        assert outbox.count == 10 and outbox.dropped == 40
        alerts = [json.loads(p) for t, p, r in link.published if t == "voice/dev/event/alert"]
        assert [(a["kind"], a["level"]) for a in alerts] == [("outbox", "warning")], "one event, sent directly"
        kept = json.loads(link.retained_of("voice/dev/alert/outbox"))
        assert kept["level"] == "warning" and kept["dropped"] >= 1
        assert not [p for p in outbox.pending(0, 100) if p.topic.endswith("/event/alert")], "not stored"
        watch.tick()
        assert board.level("outbox") == "warning", "still full"
        outbox.ack([p.id for p in outbox.pending(0, 100)])
        watch.tick()
        assert board.level("outbox") == "ok"
        assert link.retained_of("voice/dev/alert/outbox") == b""
    finally:
        outbox.close()


def test_outbox_store_error_is_critical_until_storing_works_again(tmp_path: Path) -> None:
    link = FakeLink()
    board, events = make_board(link)
    outbox = types.SimpleNamespace(stored=7, count=0, size_bytes=0, max_messages=10, max_bytes=10_000, dropped=0)
    watch = OutboxWatch(board, outbox)
    watch.store_error(OSError("disk full"))
    watch.store_error(OSError("disk full"))
    assert board.level("outbox") == "critical" and events == []
    assert [json.loads(p)["level"] for t, p, r in link.published if t.endswith("event/alert")] == ["critical"]
    watch.tick()
    assert board.level("outbox") == "critical", "nothing stored since"
    outbox.stored = 8
    watch.tick()
    assert board.level("outbox") == "ok"


def test_status_line_says_what_is_wrong() -> None:
    line = status_line(phase="running", connected=False, mqtt_error="cannot connect to broker:1883", running=1,
                       limit=1, done=3, failed=1, rejected=2, memory_level="critical",
                       engines={"transcriber": {"name": "whisper_cpp", "ready": False, "error": "no model"},
                                "summarizer": {"name": "llama_server", "ready": False, "error": None}},
                       alerts=["memory", "disk"])
    assert line.startswith("running; mqtt cannot connect to broker:1883; jobs 1/1; 3 done, 1 failed, 2 rejected")
    assert "memory critical" in line and "transcriber whisper_cpp unavailable: no model" in line
    assert "summarizer llama_server loading" in line and line.endswith("alerts: disk, memory")


def used_percent() -> float:
    return psutil.virtual_memory().percent
