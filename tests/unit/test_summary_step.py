"""SummaryStep in process: the configured summarizer bounded by summarizer.timeout_s, the extractive
fallback of a job, the error of a `summarize` request, the cache and the stage bound.

Real parts: the Engines object with the real OpenAI summarizer speaking its wire protocol to an
in-process HTTP stand-in (tests/support/http_stub.py), and the real extractive summarizer.
"""

from __future__ import annotations

import threading
import time

import pytest

from agent.engines import http_retry
from agent.engines.extractive import ExtractiveSummarizer
from agent.engines.runtime import Engines
from agent.errors import EngineError
from agent.jobs.summary import SummaryStep
from agent.settings import OpenAISummarizerSettings, SummarizerSettings, TranscriberSettings
from tests.support.http_stub import HTTPStub, Reply, json_reply
from tests.support.summaries import TRANSCRIPT

CHAT = "/v1/chat/completions"


def chat_answer(text: str) -> Reply:
    return json_reply({"id": "c1", "object": "chat.completion", "model": "gpt-test",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]})


@pytest.fixture
def stub():
    with HTTPStub({("POST", CHAT): lambda request: chat_answer("The garden project is planned.")}) as server:
        yield server


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_retry, "_sleep", lambda seconds: None)


def openai_settings(stub: HTTPStub, **options) -> SummarizerSettings:
    options.setdefault("timeout_s", 30.0)
    return SummarizerSettings(engine="openai", min_words=5, max_tokens=50,
                              openai=OpenAISummarizerSettings(base_url=stub.url + "/v1", model="gpt-test",
                                                              api_key="sk-test"), **options)


@pytest.fixture
def engines_for():
    made: list[Engines] = []

    def make(summarizer: SummarizerSettings) -> Engines:
        engines = Engines(TranscriberSettings(), summarizer, on_change=lambda: None)
        engines.summarizer.start()   # only the summarizer: no transcriber is built
        made.append(engines)
        return engines

    yield make
    for engines in made:
        engines.summarizer.close()


def step_for(settings: SummarizerSettings, told: list) -> SummaryStep:
    return SummaryStep(cache_size=8, concurrency=settings.concurrency, settings=settings, on_summary=told.append)


def test_the_configured_summarizer_answers_and_is_cached(stub, engines_for) -> None:
    settings, told = openai_settings(stub), []
    step, engines = step_for(settings, told), engines_for(settings)
    timings: dict[str, float] = {}
    outcome = step.for_job(engines, TRANSCRIPT, timings, "j1")
    assert outcome.summary.text == "The garden project is planned." and outcome.summary.engine == "openai"
    assert not outcome.fallback and outcome.error is None and told == [None]
    assert "summarize" in timings
    again = step.for_job(engines, TRANSCRIPT, {}, "j2")
    assert again.summary == outcome.summary
    assert len(stub.requests_to(CHAT)) == 1   # the same text: the cache answered
    assert TRANSCRIPT in stub.requests_to(CHAT)[0].json()["messages"][0]["content"]


def test_a_failing_summarizer_falls_back_to_extractive_for_a_job_and_fails_a_request(stub, engines_for) -> None:
    stub.route("POST", CHAT, lambda request: json_reply({"error": {"message": "model exploded"}}, status=500))
    settings, told = openai_settings(stub), []
    step, engines = step_for(settings, told), engines_for(settings)
    outcome = step.for_job(engines, TRANSCRIPT, {}, "j1")
    assert outcome.fallback and outcome.fallback_from == "openai"
    assert outcome.summary == ExtractiveSummarizer(settings).summarize(TRANSCRIPT)
    assert outcome.error["code"] == "engine_error", outcome.error
    assert told == [{"job_id": "j1", "engine": "openai", "fallback": "extractive", "error": outcome.error}]
    with pytest.raises(EngineError) as caught:   # a request asked for that engine: its error, no substitute
        step.for_request(engines, TRANSCRIPT, {})
    assert caught.value.code == "engine_error"


def test_a_hung_summarizer_is_bounded_by_timeout_s(stub, engines_for) -> None:
    released = threading.Event()

    def hang(request) -> Reply:
        released.wait(30)
        return chat_answer("too late")

    stub.route("POST", CHAT, hang)
    settings, told = openai_settings(stub, timeout_s=1.0), []
    step, engines = step_for(settings, told), engines_for(settings)
    try:
        began = time.process_time()
        outcome = step.for_job(engines, TRANSCRIPT, {}, "j1")
        assert outcome.fallback and outcome.error["code"] == "engine_timeout", outcome
        assert time.process_time() - began < 1.0   # waiting, not working
    finally:
        released.set()


def test_a_full_stage_is_waited_for_at_most_timeout_s(stub, engines_for) -> None:
    settings = openai_settings(stub, timeout_s=1.0)
    step, engines = step_for(settings, []), engines_for(settings)
    assert step.stage.acquire(timeout=1)   # the one place is taken (a summary still running elsewhere)
    try:
        with pytest.raises(EngineError) as caught:
            step.for_request(engines, TRANSCRIPT, {})
        assert caught.value.code == "engine_timeout" and "no summarizer free" in caught.value.message
        assert stub.requests_to(CHAT) == []
    finally:
        step.stage.release()
    assert step.for_request(engines, TRANSCRIPT, {}).text == "The garden project is planned."


def test_inline_summarizer_and_empty_text(engines_for) -> None:
    settings, told = SummarizerSettings(engine="extractive", min_words=5), []
    step, engines = step_for(settings, told), engines_for(settings)
    outcome = step.for_job(engines, TRANSCRIPT, {}, "j1")
    assert outcome.summary == ExtractiveSummarizer(settings).summarize(TRANSCRIPT) and not outcome.fallback
    assert told == [None]
    assert step.for_job(engines, "   ", {}, "j2").summary is None and told == [None]   # nothing to summarize
    assert step.for_request(engines, "", {}) is None


def test_a_failing_observer_does_not_fail_the_job(engines_for) -> None:
    settings = SummarizerSettings(engine="extractive", min_words=5)

    def observer(fallback) -> None:
        raise RuntimeError("observer broke")

    step = SummaryStep(cache_size=8, settings=settings, on_summary=observer)
    assert step.for_job(engines_for(settings), TRANSCRIPT, {}, "j1").summary is not None


def test_reconfigure_changes_the_stage_bound_for_new_calls() -> None:
    step = SummaryStep(cache_size=8, settings=SummarizerSettings(concurrency=1))
    first = step.stage
    step.reconfigure(SummarizerSettings(concurrency=2))
    assert step.stage is not first and step.stage.limit == 2
    same = step.stage
    step.reconfigure(SummarizerSettings(concurrency=2, max_sentences=3))
    assert step.stage is same   # an unchanged bound keeps the stage (and who is inside it)
