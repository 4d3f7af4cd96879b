"""A batch's deadline: n files get n times jobs.timeout_s (whisper.cpp's own limit is its timeout x
files), and the inbox worker hands the whole batch to the runner at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agent.engines import deadline
from agent.sources.inbox_worker import InboxWorker
from agent.jobs.admission import Admission
from agent.jobs.runner import Runner
from agent.jobs.slot import JobSlot
from agent.settings import InboxSettings
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav


class BatchPipeline:
    """Stands in for the pipeline: records each batch, answers each job with a record."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.time_left: list[float] = []   # what an engine's wait of 1e9 s is cut to, per batch

    def run(self, job_id: str, source: Any, load: Any, **kwargs: Any) -> dict:
        self.batches.append([job_id])
        self.time_left.append(deadline.bounded(1e9))
        return {"job_id": job_id, "source": source.as_dict()}

    def run_batch(self, jobs: list) -> list[dict]:
        self.batches.append([job.job_id for job in jobs])
        self.time_left.append(deadline.bounded(1e9))
        return [{"job_id": job.job_id, "source": job.source.as_dict()} for job in jobs]


def test_inbox_worker_gives_the_whole_batch_n_timeouts(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"f{i}.wav").write_bytes(tone_wav(0.1))
        os.utime(inbox / f"f{i}.wav", (time.time() - 60, time.time() - 60))
    pipeline = BatchPipeline()
    admission = Admission(JobSlot(1))
    admission.set_paused(True)   # let all three become ready first, so they go as one batch
    worker = InboxWorker(InboxSettings(path=str(inbox), settle_ms=50), admission, Runner(pipeline, 100.0),
                         job_event=lambda *a, **k: None, batch_size=lambda: 3)
    worker.start()
    try:
        wait_until(lambda: worker.inbox.ready_count >= 3, 10, "3 files ready")
        admission.set_paused(False)
        wait_until(lambda: len(list((inbox / "processed").glob("*.wav.json"))) == 3, 10, "3 files processed")
    finally:
        worker.stop(grace_s=5)
    assert [len(b) for b in pipeline.batches] == [3]
    assert 290 < pipeline.time_left[0] <= 300, pipeline.time_left
    assert deadline.bounded(1e9) == 1e9, "outside a job nothing is cut"
