"""Issue 15, item 5: the smaller holes of the same family, each shown by a test that fails without
its fix. A batch's watchdog allowance, the bounded control queue, the VAD cache bounded by bytes,
and the inbox's promise stated exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt

import agent.sources.inbox
from agent.app import App
from agent.audio.vad_cache import VadCache
from agent.mqtt.dispatch import CONTROL_QUEUE, Dispatcher
from agent.sources.inbox_worker import InboxWorker
from agent.jobs.admission import Admission
from agent.jobs.runner import Runner
from agent.jobs.slot import JobSlot
from agent.settings import InboxSettings, JobsSettings, Settings
from agent.ops.systemd import WatchdogGate
from agent.mqtt.topics import Topics
from handlers.base import Command
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav


# --- a batch gets one allowance per file ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_of_n_files_gets_n_times_the_job_allowance() -> None:
    """whisper.cpp allows a batch timeout_s x n; the watchdog must not give up on it at timeout_s + 30."""
    clock = Clock()
    fake_app = SimpleNamespace(gate=WatchdogGate(clock), settings=Settings(jobs=JobsSettings(timeout_s=100)))
    with App.watch_job(fake_app, "single"):
        clock.now += 150   # 100 + min(30, 100) = 130 s allowed for one job
        assert fake_app.gate.healthy() == (False, ["job-single"])
    clock.now = 1000.0
    with App.watch_job(fake_app, "batch", 8):
        clock.now += 500   # one slow batch of 8 files, each well within its 100 s
        assert fake_app.gate.healthy() == (True, [])
        clock.now += 331   # 8 x 100 + 30 = 830 s: past that the batch is stuck
        assert fake_app.gate.healthy() == (False, ["job-batch"])


class BatchPipeline:
    """Stands in for the pipeline: records each batch, answers each job with a record."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def run(self, job_id: str, source: Any, load: Any, **kwargs: Any) -> dict:
        self.batches.append([job_id])
        return {"job_id": job_id, "source": source.as_dict()}

    def run_batch(self, jobs: list) -> list[dict]:
        self.batches.append([job.job_id for job in jobs])
        return [{"job_id": job.job_id, "source": job.source.as_dict()} for job in jobs]


def test_inbox_worker_asks_the_watchdog_for_the_whole_batch(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"f{i}.wav").write_bytes(tone_wav(0.1))
        os.utime(inbox / f"f{i}.wav", (time.time() - 60, time.time() - 60))
    watched: list[tuple] = []

    class Watch:
        def __init__(self, *args: Any) -> None:
            watched.append(args)

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    pipeline = BatchPipeline()
    admission = Admission(JobSlot(1))
    admission.set_paused(True)   # let all three become ready first, so they go as one batch
    worker = InboxWorker(InboxSettings(path=str(inbox), settle_ms=50), admission, Runner(pipeline, Watch),
                         job_event=lambda *a, **k: None, batch_size=lambda: 3)
    worker.start()
    try:
        wait_until(lambda: worker.inbox.ready_count >= 3, 10, "3 files ready")
        admission.set_paused(False)
        wait_until(lambda: len(list((inbox / "processed").glob("*.wav.json"))) == 3, 10, "3 files processed")
    finally:
        worker.stop(grace_s=5)
    assert [len(b) for b in pipeline.batches] == [3]
    assert watched == [(pipeline.batches[0][0], 3)]


# --- the control queue is bounded -----------------------------------------------------------------


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
                            admission=Admission(JobSlot(1)), runner=Runner(None, lambda *a: contextlib.nullcontext()),
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


# --- the VAD cache is bounded by bytes --------------------------------------------------------------


def test_vad_cache_is_bounded_by_bytes_not_only_entries() -> None:
    frames = 60_000   # a 30-minute file in 30 ms frames
    cache = VadCache(256, max_bytes=1_000_000)
    results = {}
    for i in range(40):
        key = i.to_bytes(16, "big")
        value = tuple(bool((j * (i + 1)) % 3) for j in range(frames))
        results[key] = value
        cache.put(key, value)
    assert cache.size_bytes <= 1_000_000
    assert 0 < len(cache) < 40
    newest = (39).to_bytes(16, "big")
    assert cache.get(newest) == results[newest]
    assert cache.get((0).to_bytes(16, "big")) is None   # the oldest went first
    assert cache.stats()["bytes"] == cache.size_bytes


def test_vad_cache_default_keeps_256_long_results_well_under_the_old_120_mb() -> None:
    cache = VadCache(256)
    value = tuple([True, False] * 30_000)
    for i in range(256):
        cache.put(i.to_bytes(16, "big"), value)
    assert cache.size_bytes <= 8 * 1024 * 1024


# --- the inbox promises what it does ----------------------------------------------------------------


def test_inbox_docstring_states_at_least_once_with_one_record() -> None:
    doc = " ".join((agent.sources.inbox.__doc__ or "").split())
    assert "at-least-once with one record" in doc
    assert "never processed twice" not in doc and "never process it twice" not in doc
