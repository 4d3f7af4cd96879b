"""A batch's watchdog allowance: n files get n times the job allowance, and the inbox worker asks
for the whole batch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agent.sources.inbox_worker import InboxWorker
from agent.jobs.admission import Admission
from agent.jobs.runner import Runner
from agent.jobs.slot import JobSlot
from agent.settings import InboxSettings
from agent.ops.readiness import Watchdog
from agent.ops.systemd import Notifier, WatchdogGate
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_of_n_files_gets_n_times_the_job_allowance() -> None:
    """whisper.cpp allows a batch timeout_s x n; the watchdog must not give up on it at timeout_s + 30."""
    clock = Clock()
    watchdog = Watchdog(Notifier(env={}), 100, tick_s=1.0, gate=WatchdogGate(clock))
    with watchdog.watch_job("single"):
        clock.now += 150   # 100 + min(30, 100) = 130 s allowed for one job
        assert watchdog.gate.healthy() == (False, ["job-single"])
    clock.now = 1000.0
    with watchdog.watch_job("batch", 8):
        clock.now += 500   # one slow batch of 8 files, each well within its 100 s
        assert watchdog.gate.healthy() == (True, [])
        clock.now += 331   # 8 x 100 + 30 = 830 s: past that the batch is stuck
        assert watchdog.gate.healthy() == (False, ["job-batch"])


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
