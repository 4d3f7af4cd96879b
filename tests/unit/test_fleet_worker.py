"""FleetWorker in process: a shared job taken, spooled, run through the real Runner and Pipeline and
answered (`accepted`, then the result); a job id seen again answered from the stored result; a bad
job refused without a run; a paused device handing jobs back to the group; a stop leaving a
waiting job spooled for the next start.

Real parts: Settings, Topics, JobSlot, Admission, Runner, Pipeline, Engines (the model-free
`bench_metadata` transcriber, extractive summarizer) and the spool on disk. The one stand-in is
the MQTT connection (LinkStandIn): unit tests run no broker; tests/e2e/test_fleet_*.py run the
same worker against a real Mosquitto.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import wave
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from agent.engines.bench_metadata import describe
from agent.engines.runtime import Engines
from agent.jobs.admission import Admission
from agent.jobs.pipeline import Pipeline
from agent.jobs.runner import Runner
from agent.jobs.slot import JobSlot
from agent.mqtt.topics import Topics
from agent.settings import TEST_ENGINES_ENV, FleetSettings, Settings, SummarizerSettings, TranscriberSettings
from agent.sources.fleet import FleetWorker

REPLY_TO = "voice/results/ctl"   # the reply namespace: below <prefix>/results/


class LinkStandIn:
    """A STAND-IN for agent.mqtt.link.MqttLink (no broker in unit tests): routes are kept, every
    publish is recorded and acknowledged at once."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected.set()
        self.routes: dict[str, Callable[[Any], None]] = {}
        self.published: list[tuple[str, bytes, Any]] = []
        self._cond = threading.Condition()

    def route(self, topic_filter: str, handler: Callable[[Any], None]) -> None:
        self.routes[topic_filter] = handler

    def unroute(self, topic_filter: str, drain: bool = False) -> None:
        self.routes.pop(topic_filter, None)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, properties: Any = None):
        with self._cond:
            self.published.append((topic, payload, properties))
            self._cond.notify_all()
        return _Acknowledged(len(self.published))

    def puback_failure(self, mid: int) -> None:
        return None

    def deliver(self, topic_filter: str, payload: dict) -> None:
        """The broker hands the worker a message on `topic_filter`."""
        self.routes[topic_filter](_Message(json.dumps(payload).encode()))

    def wait_for(self, pred: Callable[[str, dict], bool], count: int = 1, timeout: float = 20) -> list[dict]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self._matching(pred)) >= count, timeout), \
                f"{count} matching publish(es) not seen within {timeout}s: {self.published}"
            return self._matching(pred)

    def _matching(self, pred: Callable[[str, dict], bool]) -> list[dict]:
        return [json.loads(p) for t, p, _ in self.published if pred(t, json.loads(p))]


@dataclasses.dataclass
class _Acknowledged:
    mid: int

    def wait_for_publish(self, timeout: float | None = None) -> None:
        pass

    def is_published(self) -> bool:
        return True


@dataclasses.dataclass
class _Message:
    payload: bytes
    properties: Any = None


def wav_b64(seconds: float, amplitude: int = 3000) -> tuple[str, np.ndarray]:
    t = np.arange(int(16000 * seconds)) / 16000
    samples = (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return base64.b64encode(buffer.getvalue()).decode(), samples


class Rig:
    def __init__(self, state_dir: Path) -> None:
        self.settings = Settings(state_dir=str(state_dir), fleet=FleetSettings(worker=True),
                                 transcriber=TranscriberSettings(engine="bench_metadata"),
                                 summarizer=SummarizerSettings(engine="extractive", min_words=1))
        self.topics = Topics("voice", "dev")
        self.events: list[tuple[str, dict]] = []
        self.engines = Engines(self.settings.transcriber, self.settings.summarizer, on_change=lambda: None)
        self.engines.start()
        self.pipeline = Pipeline(self.engines, lambda kind, body: self.events.append((kind, body)), cache_size=8)
        self.admission = Admission(JobSlot(1))
        self.link = LinkStandIn()
        self.worker = self.make_worker()

    def make_worker(self) -> FleetWorker:
        worker = FleetWorker(settings=self.settings, topics=self.topics, admission=self.admission,
                             runner=Runner(self.pipeline, 600.0))   # jobs.timeout_s
        worker.attach(self.link)
        return worker

    @property
    def jobs_filter(self) -> str:
        return self.topics.shared_jobs(self.settings.fleet.group)

    def answers(self, job_id: str, status: str, count: int = 1) -> list[dict]:
        return self.link.wait_for(lambda t, b: t == REPLY_TO and b.get("job_id") == job_id and b["status"] == status,
                                  count)

    def close(self) -> None:
        self.worker.stop(grace_s=5)
        self.engines.transcriber.close()
        self.engines.summarizer.close()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TEST_ENGINES_ENV, "1")
    made = Rig(tmp_path / "state")
    yield made
    made.close()


def test_a_shared_job_is_accepted_run_and_answered(rig: Rig) -> None:
    rig.worker.start()
    assert list(rig.link.routes) == [rig.jobs_filter]   # joined the group
    audio, samples = wav_b64(0.5)
    rig.link.deliver(rig.jobs_filter, {"job_id": "f-1", "audio_b64": audio, "reply_to": REPLY_TO,
                                       "transaction": "t-1"})
    (result,) = rig.answers("f-1", "ok")
    (accepted,) = rig.answers("f-1", "accepted")
    assert accepted["agent_job_id"] == result["agent_job_id"] and accepted["device_id"] == "dev"
    assert result["text"] == describe(samples) and result["audio_s"] == 0.5 and result["transaction"] == "t-1"
    assert result["engines"]["transcriber"] == "bench_metadata"
    # the job ran through the pipeline as a `fleet` job under the agent's own id
    done = [b for k, b in rig.events if k == "job" and b["state"] == "done"]
    assert [d["job_id"] for d in done] == [result["agent_job_id"]]
    assert done[0]["source"] == {"kind": "fleet", "name": "f-1"}
    stats = rig.worker.stats()
    assert (stats["taken"], stats["done"], stats["failed"]) == (1, 1, 0)
    assert _wait(lambda: rig.worker.stats()["held"] == 0), "the finished job is still spooled"

    # the same job id again: the stored result, not a second run
    rig.link.deliver(rig.jobs_filter, {"job_id": "f-1", "audio_b64": audio, "reply_to": REPLY_TO})
    again = rig.answers("f-1", "ok", count=2)[1]
    assert again["text"] == result["text"] and again["agent_job_id"] == result["agent_job_id"]
    assert rig.pipeline.done == 1 and rig.worker.stats()["taken"] == 1


def test_a_bad_job_gets_one_error_answer(rig: Rig) -> None:
    rig.worker.start()
    rig.link.deliver(rig.jobs_filter, {"job_id": "f-3", "reply_to": REPLY_TO})   # no audio: refused as read
    assert rig.answers("f-3", "error")[0]["error"]["code"] == "bad_request"
    assert rig.worker.stats()["refused"] == 1 and rig.events == []
    # audio that is not base64 is found out when the job loads it: accepted, then one error
    rig.link.deliver(rig.jobs_filter, {"job_id": "f-2", "audio_b64": "not base64 !!", "reply_to": REPLY_TO})
    (error,) = rig.answers("f-2", "error")
    assert error["error"]["code"] == "bad_request", error
    assert len(rig.answers("f-2", "accepted")) == 1
    assert rig.worker.stats()["failed"] == 1 and (rig.pipeline.done, rig.pipeline.failed) == (0, 1)
    assert _wait(lambda: rig.worker.stats()["held"] == 0), "the failed job is still spooled"


def test_a_paused_device_hands_jobs_back_to_the_group(rig: Rig) -> None:
    rig.admission.set_paused(True)
    rig.worker.start()
    audio, _ = wav_b64(0.3)
    rig.link.deliver(rig.jobs_filter, {"job_id": "f-4", "audio_b64": audio, "reply_to": REPLY_TO})
    (forwarded,) = rig.link.wait_for(lambda t, b: t == "voice/jobs/transcribe" and b.get("job_id") == "f-4")
    assert forwarded["audio_b64"] == audio   # unchanged
    props = [p for t, _, p in rig.link.published if t == "voice/jobs/transcribe"][0]
    assert ("voice-agent-handed-back-by", "dev") in props.UserProperty
    assert _wait(lambda: rig.worker.stats()["held"] == 0 and rig.worker.stats()["forwarded"] == 1)
    assert rig.pipeline.done == 0 and not [b for t, b, _ in rig.link.published if t == REPLY_TO]


def test_a_job_waiting_at_stop_stays_spooled_and_runs_at_the_next_start(rig: Rig) -> None:
    rig.admission.set_paused(True)
    rig.link.connected.clear()   # cannot hand it back either: it waits here
    rig.worker.start()
    audio, samples = wav_b64(0.4)
    rig.link.deliver(rig.jobs_filter, {"job_id": "f-5", "audio_b64": audio, "reply_to": REPLY_TO})
    assert _wait(lambda: rig.worker.stats()["held"] == 1)
    rig.worker.stop(grace_s=5)
    assert not rig.link.routes   # left the group
    rig.admission.set_paused(False)
    rig.link.connected.set()
    rig.worker = rig.make_worker()   # the next start, same state_dir
    rig.worker.start()
    (result,) = rig.answers("f-5", "ok")
    assert result["text"] == describe(samples)


def _wait(pred: Callable[[], bool], timeout: float = 20) -> bool:
    from tests.support.wait import wait_until
    return bool(wait_until(pred, timeout, "the worker's state", interval=0.02))
