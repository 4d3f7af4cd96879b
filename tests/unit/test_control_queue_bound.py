"""A flood of requests is answered busy instead of queued without limit (the bounded control queue)."""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt

from agent.mqtt.dispatch import CONTROL_QUEUE, Dispatcher
from agent.jobs.admission import Admission
from agent.jobs.runner import Runner
from agent.jobs.slot import JobSlot
from agent.settings import Settings
from agent.mqtt.topics import Topics
from handlers.base import Command
from tests.support.wait import wait_until


class FakeLink:
    def __init__(self) -> None:
        self.topics = Topics("voice", "dev")
        self.answers: list[dict] = []

    def reply_properties(self, msg: Any) -> tuple[None, None]:
        return None, None

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self.answers.append(json.loads(payload))


def request(command: str, body: dict) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=f"voice/dev/request/{command}".encode())
    msg.payload = json.dumps(body).encode()
    return msg


def test_a_flood_of_requests_is_answered_busy_instead_of_queued_without_limit() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(req: Any) -> dict:
        started.set()
        release.wait(10)
        return {"ok": True}

    link = FakeLink()
    dispatcher = Dispatcher({"slow": Command("slow", slow)}, services=None,  # type: ignore[arg-type]
                            admission=Admission(JobSlot(1)), runner=Runner(None, 600.0),
                            settings=Settings(), job_event=lambda *a, **k: None)
    dispatcher.attach(link)  # type: ignore[arg-type]
    try:
        dispatcher.on_message(request("slow", {"transaction": "t-first"}))
        assert started.wait(5), "the control thread took the first request"
        extra = 25
        for i in range(CONTROL_QUEUE + extra):
            dispatcher.on_message(request("slow", {"transaction": f"t{i}"}))
        busy = [a for a in link.answers if a["status"] == "error"]
        assert len(busy) == extra, "once the queue is full, each further request is refused at once"
        assert {a["error"]["code"] for a in busy} == {"busy"}
        assert [a["transaction"] for a in busy] == [f"t{i}" for i in range(CONTROL_QUEUE, CONTROL_QUEUE + extra)]
        assert dispatcher.stats.busy == extra
        release.set()
        wait_until(lambda: len(link.answers) == CONTROL_QUEUE + extra + 1, 10, "every queued request answered")
        assert sum(a["status"] == "ok" for a in link.answers) == CONTROL_QUEUE + 1
    finally:
        release.set()
        dispatcher.close()
