"""Pipeline in process: a job's events in order (running, transcript before any summary, done), its
record, the transcript cache, failures published once, a failing summarizer that costs nothing
but the summary, and a batch in which a bad file fails alone.

Real parts: the Engines object with the model-free `bench_metadata` transcriber (it answers with
a description of the audio it got, so the test sees which audio reached it), the real extractive
summarizer, and the real OpenAI summarizer against the in-process HTTP stand-in.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.clip import Audio
from agent.engines import http_retry
from agent.engines.bench_metadata import describe
from agent.engines.runtime import Engines
from agent.errors import AgentError
from agent.jobs.pipeline import Job, Loaded, Pipeline, Source
from agent.settings import TEST_ENGINES_ENV, OpenAISummarizerSettings, SummarizerSettings, TranscriberSettings
from tests.support.http_stub import HTTPStub, json_reply
from tests.support.summaries import TRANSCRIPT


def tone(seconds: float, amplitude: int = 3000) -> Audio:
    t = np.arange(int(16000 * seconds)) / 16000
    return Audio((amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16))


def loaded(seconds: float, amplitude: int = 3000) -> Loaded:
    return Loaded(tone(seconds, amplitude), f"hash-{seconds}-{amplitude}")


class Rig:
    """A Pipeline on real engines; every emitted event kept as (kind, body)."""

    def __init__(self, summarizer: SummarizerSettings) -> None:
        self.events: list[tuple[str, dict]] = []
        self.told: list = []
        self.engines = Engines(TranscriberSettings(engine="bench_metadata"), summarizer, on_change=lambda: None)
        self.engines.start()
        self.pipeline = Pipeline(self.engines, lambda kind, body: self.events.append((kind, body)), cache_size=8,
                                 summarizer_settings=summarizer, on_summary=self.told.append)

    def kinds(self, job_id: str) -> list[str]:
        return [f"job:{b['state']}" if k == "job" else k for k, b in self.events if b.get("job_id") == job_id]

    def close(self) -> None:
        self.engines.transcriber.close()
        self.engines.summarizer.close()


@pytest.fixture
def rig_for(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TEST_ENGINES_ENV, "1")
    monkeypatch.setattr(http_retry, "_sleep", lambda seconds: None)
    made: list[Rig] = []

    def make(summarizer: SummarizerSettings = SummarizerSettings(engine="extractive", min_words=1)) -> Rig:
        made.append(Rig(summarizer))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def test_a_job_publishes_its_events_in_order_and_returns_its_record(rig_for) -> None:
    rig = rig_for()
    job = loaded(0.5)
    record = rig.pipeline.run("j1", Source("inbox", "a.wav"), lambda: job)
    text = describe(job.audio.samples)
    assert rig.kinds("j1") == ["job:running", "transcript", "summary", "job:done"]
    transcript = dict(rig.events)["transcript"]
    assert transcript["text"] == text and transcript["engine"] == "bench_metadata"
    assert transcript["source"] == {"kind": "inbox", "name": "a.wav"} and transcript["audio_s"] == 0.5
    assert {"decode", "vad", "transcribe", "total"} <= set(transcript["timings_ms"])
    assert record["transcript"] == text and record["summary"] == text   # one sentence: its own summary
    assert record["content_hash"] == job.content_hash and record["job_id"] == "j1"
    assert record["engines"] == {"transcriber": "bench_metadata", "summarizer": "extractive"}
    assert "summary_fallback" not in record and rig.told == [None]
    assert (rig.pipeline.done, rig.pipeline.failed) == (1, 0)


def test_the_same_audio_is_transcribed_once(rig_for) -> None:
    rig = rig_for()
    first = rig.pipeline.run("j1", Source("inbox", "a.wav"), lambda: loaded(0.4))
    second = rig.pipeline.run("j2", Source("inbox", "copy-of-a.wav"), lambda: loaded(0.4))
    assert first["transcript"] == second["transcript"]
    stats = rig.pipeline.transcripts.stats()
    assert (stats["hits"], stats["misses"]) == (1, 1), stats
    rig.pipeline.run("j3", Source("inbox", "b.wav"), lambda: loaded(0.4, amplitude=9000))
    assert rig.pipeline.transcripts.stats()["misses"] == 2


@pytest.mark.parametrize("failure, code", [(AgentError("not audio", code="corrupt"), "corrupt"),
                                           (ValueError("a bug"), "internal")])
def test_a_failed_load_publishes_failed_once_and_raises(rig_for, failure, code) -> None:
    rig = rig_for()

    def load() -> Loaded:
        raise failure

    with pytest.raises(AgentError) as caught:
        rig.pipeline.run("j1", Source("request", "x"), load)
    assert caught.value.code == code
    assert rig.kinds("j1") == ["job:running", "job:failed"]
    failed = rig.events[-1][1]
    assert failed["error"]["code"] == code and failed["source"] == {"kind": "request", "name": "x"}
    if code == "internal":
        assert "a bug" not in failed["error"]["message"]   # no internals on the wire
    assert (rig.pipeline.done, rig.pipeline.failed) == (0, 1)


def test_a_failing_summarizer_keeps_the_transcript_and_falls_back(rig_for) -> None:
    with HTTPStub({("POST", "/v1/chat/completions"): lambda request: json_reply({"error": "down"}, status=503)}) as stub:
        rig = rig_for(SummarizerSettings(engine="openai", min_words=1, openai=OpenAISummarizerSettings(
            base_url=stub.url + "/v1", model="gpt-test", api_key="sk-test", max_retries=0)))
        record = rig.pipeline.run("j1", Source("inbox", "a.wav"), lambda: loaded(0.3))
        assert stub.requests_to("/v1/chat/completions"), "the configured summarizer was not asked"
    assert rig.kinds("j1") == ["job:running", "transcript", "summary", "job:done"]
    summary = [b for k, b in rig.events if k == "summary"][0]
    assert summary["fallback"] is True and summary["fallback_from"] == "openai" and summary["engine"] == "extractive"
    assert record["summary_fallback"] == {"from": "openai", "error": summary["error"]}
    assert record["transcript"] == describe(tone(0.3).samples)
    assert rig.told and rig.told[0]["engine"] == "openai"


def test_no_summary_when_not_asked(rig_for) -> None:
    rig = rig_for()
    record = rig.pipeline.run("j1", Source("inbox", "a.wav"), lambda: loaded(0.3), summarize=False)
    assert rig.kinds("j1") == ["job:running", "transcript", "job:done"] and record["summary"] is None


def test_a_batch_fails_a_bad_file_alone(rig_for) -> None:
    rig = rig_for()

    def bad() -> Loaded:
        raise AgentError("not audio", code="corrupt")

    jobs = [Job("b1", Source("inbox", "1.wav"), lambda: loaded(0.2)),
            Job("b2", Source("inbox", "2.wav"), bad),
            Job("b3", Source("inbox", "3.wav"), lambda: loaded(0.3))]
    results = rig.pipeline.run_batch(jobs)
    assert isinstance(results[1], AgentError) and results[1].code == "corrupt"
    assert results[0]["transcript"] == describe(tone(0.2).samples)
    assert results[2]["transcript"] == describe(tone(0.3).samples)
    assert rig.kinds("b2") == ["job:running", "job:failed"]
    for job_id in ("b1", "b3"):
        assert rig.kinds(job_id) == ["job:running", "transcript", "summary", "job:done"]
    assert (rig.pipeline.done, rig.pipeline.failed) == (2, 1)
