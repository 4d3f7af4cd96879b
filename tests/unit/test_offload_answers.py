"""The device's side of fleet offload with a stand-in link (the real broker and worker are in
tests/e2e/test_fleet_offload.py): answers are matched to waiting jobs and checked, a silent fleet
is waited on only briefly, and `transcriber.language: auto` notes engines that cannot detect it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config.checks import language_notes
from agent.errors import EngineError
from agent.mqtt import offload as offload_module
from agent.mqtt.offload import FleetOffload
from agent.mqtt.topics import Topics
from agent.settings import FasterWhisperSettings, Settings, TranscriberSettings, WhisperCppSettings


@dataclass
class StandInLink:
    """Records publishes; `answer(body)` is what a worker would send back on the reply topic."""

    answer: Any = None
    reason: int | None = None
    published: list[tuple[str, dict]] = field(default_factory=list)
    handlers: dict[str, Any] = field(default_factory=dict)
    connected: threading.Event = field(default_factory=threading.Event)

    def route(self, topic_filter: str, handler: Any) -> None:
        self.handlers[topic_filter] = handler

    def unroute(self, topic_filter: str) -> None:
        self.handlers.pop(topic_filter, None)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Any:
        body = json.loads(payload)
        self.published.append((topic, body))
        if self.answer is not None:
            for reply in self.answer(body):
                for handler in list(self.handlers.values()):
                    threading.Timer(0.01, handler, [SimpleNamespace(payload=json.dumps(reply).encode())]).start()
        return SimpleNamespace(mid=1, wait_for_publish=lambda timeout: None)

    def puback_failure(self, mid: int) -> int | None:
        return self.reason


def offload_with(link: StandInLink) -> FleetOffload:
    link.connected.set()
    o = FleetOffload(Topics("voice", "pi"), enabled=True)
    o.attach(link)
    return o


def test_a_worker_answer_is_matched_checked_and_bounded() -> None:
    def worker(job: dict) -> list[dict]:
        return [{"job_id": "someone-else", "status": "ok", "text": "forged"},
                {"job_id": job["job_id"], "status": "accepted"},
                {"job_id": job["job_id"], "status": "ok", "text": "hello", "language": "en", "device_id": "big",
                 "engines": {"transcriber": "../../bin/sh"}}]
    link = StandInLink(answer=worker)
    answer = offload_with(link)(b"RIFF", 5)
    assert answer["text"] == "hello" and answer["device_id"] == "big"
    assert answer["engines"]["transcriber"] == "?", "a name that is not a plain name is not repeated"
    topic, body = link.published[0]
    assert topic == "voice/jobs/transcribe" and body["reply_to"] == "voice/results/pi/offload"
    assert body["summarize"] is False and set(body) == {"job_id", "audio_b64", "reply_to", "summarize"}
    assert "voice/results/pi/offload" in link.handlers


def test_no_subscriber_fails_at_once_and_a_silent_fleet_is_waited_on_briefly(monkeypatch) -> None:
    with pytest.raises(EngineError, match="no fleet worker is subscribed"):
        offload_with(StandInLink(reason=16))(b"RIFF", 30)
    monkeypatch.setattr(offload_module, "SILENT_WAIT_S", 0.05)
    silent = offload_with(StandInLink())
    with pytest.raises(EngineError, match="within 0.2 s"):
        silent(b"RIFF", 0.2)
    with pytest.raises(EngineError, match="took the job within 0.05 s"):
        silent(b"RIFF", 30)   # a second job does not wait the whole timeout


def test_worker_errors_say_the_worker_s_code() -> None:
    link = StandInLink(answer=lambda job: [{"job_id": job["job_id"], "status": "error", "device_id": "big",
                                            "error": {"code": "corrupt", "message": "bad"}}])
    with pytest.raises(EngineError) as info:
        offload_with(link)(b"RIFF", 5)
    assert info.value.details["worker_code"] == "corrupt"


def test_language_auto_notes_engines_and_models_that_cannot_detect_it() -> None:
    def notes(**t: Any) -> list[str]:
        return [str(p) for p in language_notes(Settings(transcriber=TranscriberSettings(language="auto", **t)))]
    assert "PocketSphinx" in notes(engine="pocketsphinx")[0]
    assert "English-only" in notes(engine="whisper_cpp", whisper_cpp=WhisperCppSettings(model="/m/ggml-base.en.bin"))[0]
    assert "English-only" in notes(engine="faster_whisper", faster_whisper=FasterWhisperSettings(model="/m/tiny.en"))[0]
    assert notes(engine="whisper_cpp", whisper_cpp=WhisperCppSettings(model="/m/ggml-base.bin")) == []
    assert notes(engine="faster_whisper") == [] and notes(engine="openai") == []
    assert language_notes(Settings(transcriber=TranscriberSettings(engine="pocketsphinx", language="en"))) == []
