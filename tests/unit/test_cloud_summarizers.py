"""The two cloud summarizer APIs over their real wire protocols, against an in-process HTTP stub
(tests/support/http_stub.py) speaking the OpenAI and Anthropic formats.
"""

from __future__ import annotations

import logging
import time

import pytest

from agent.engines import make_summarizer
from agent.engines.anthropic_chat import AnthropicSummarizer
from agent.engines.llama_server import LlamaServerSummarizer
from agent.engines.openai_chat import OpenAISummarizer
from agent.errors import EngineError
from agent.settings import AnthropicSummarizerSettings, OpenAISummarizerSettings, SummarizerSettings
from tests.support.http_stub import HTTPStub, Reply, json_reply, sequence
from tests.support.summaries import TRANSCRIPT


KEY = "sk-test-0123456789-secret"


class OpenAIWire:
    engine = "openai"
    path = "/v1/chat/completions"

    @staticmethod
    def settings(url: str, **options) -> SummarizerSettings:
        options.setdefault("api_key", KEY)
        return SummarizerSettings(engine="openai", min_words=5, max_tokens=50,
                                  openai=OpenAISummarizerSettings(base_url=url + "/v1", model="gpt-test", **options))

    @staticmethod
    def ok(text: str = "The garden project is planned.") -> Reply:
        return json_reply({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}]})

    @staticmethod
    def check_request(request) -> None:
        assert request.method == "POST"
        assert request.header("Authorization") == f"Bearer {KEY}"
        assert request.header("Content-Type") == "application/json"
        body = request.json()
        assert body["model"] == "gpt-test" and body["max_tokens"] == 50
        assert body["messages"][0]["role"] == "user"
        assert TRANSCRIPT in body["messages"][0]["content"]
        assert body["messages"][0]["content"].startswith("Summarize")


class AnthropicWire:
    engine = "anthropic"
    path = "/v1/messages"

    @staticmethod
    def settings(url: str, **options) -> SummarizerSettings:
        options.setdefault("api_key", KEY)
        return SummarizerSettings(engine="anthropic", min_words=5, max_tokens=50,
                                  anthropic=AnthropicSummarizerSettings(base_url=url, model="claude-test", **options))

    @staticmethod
    def ok(text: str = "The garden project is planned.") -> Reply:
        half = len(text) // 2
        return json_reply({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
                           "stop_reason": "end_turn",
                           "content": [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}],
                           "usage": {"input_tokens": 80, "output_tokens": 9}})

    @staticmethod
    def check_request(request) -> None:
        assert request.method == "POST"
        assert request.header("x-api-key") == KEY
        assert request.header("anthropic-version") == "2023-06-01"
        assert request.header("content-type") == "application/json"
        assert request.header("Authorization") is None
        body = request.json()
        assert body["model"] == "claude-test" and body["max_tokens"] == 50
        assert body["messages"] == [{"role": "user", "content": body["messages"][0]["content"]}]
        assert TRANSCRIPT in body["messages"][0]["content"]


@pytest.fixture(params=[OpenAIWire, AnthropicWire], ids=["openai", "anthropic"])
def wire(request):
    return request.param


@pytest.fixture
def stub():
    with HTTPStub() as server:
        yield server


def _summarizer(wire, stub: HTTPStub, **options):
    summarizer = make_summarizer(wire.settings(stub.url, **options))
    summarizer.load()
    return summarizer


def test_cloud_request_shape_and_answer(wire, stub: HTTPStub) -> None:
    stub.route("POST", wire.path, lambda request: wire.ok())
    summarizer = _summarizer(wire, stub)
    summary = summarizer.summarize(TRANSCRIPT)
    assert summary.text == "The garden project is planned." and summary.engine == wire.engine
    summarizer.summarize(TRANSCRIPT)
    sent = stub.requests_to(wire.path)
    assert len(sent) == 2 and not stub.errors
    for request in sent:
        wire.check_request(request)
    summarizer.close()


def test_cloud_429_with_retry_after_is_waited_for(wire, stub: HTTPStub) -> None:
    stub.route("POST", wire.path, sequence(
        json_reply({"error": {"type": "rate_limit_error"}}, status=429, **{"Retry-After": "1"}), wire.ok()))
    summarizer = _summarizer(wire, stub, max_retries=3)
    began = time.monotonic()
    assert summarizer.summarize(TRANSCRIPT).text == "The garden project is planned."
    assert 0.9 <= time.monotonic() - began < 15   # waited for Retry-After; the upper bound is wide for load
    assert len(stub.requests_to(wire.path)) == 2


def test_cloud_500_then_200_succeeds(wire, stub: HTTPStub) -> None:
    stub.route("POST", wire.path, sequence(Reply(500, b"upstream broke"), wire.ok("Recovered.")))
    summarizer = _summarizer(wire, stub, max_retries=3)
    assert summarizer.summarize(TRANSCRIPT).text == "Recovered."
    assert len(stub.requests_to(wire.path)) == 2


def test_cloud_500_forever_is_engine_error_after_max_retries(wire, stub: HTTPStub, monkeypatch) -> None:
    from agent.engines import http_retry
    waits: list[float] = []
    monkeypatch.setattr(http_retry, "_sleep", waits.append)
    stub.route("POST", wire.path, lambda request: Reply(500, b"still broken"))
    summarizer = _summarizer(wire, stub, max_retries=2)
    with pytest.raises(EngineError) as caught:
        summarizer.summarize(TRANSCRIPT)
    assert caught.value.code == "engine_error"
    assert len(stub.requests_to(wire.path)) == 3 and len(waits) == 2


def test_cloud_server_slower_than_timeout_is_engine_timeout(wire, stub: HTTPStub) -> None:
    reply = wire.ok()
    reply.delay_s = 30.0
    stub.route("POST", wire.path, lambda request: reply)
    summarizer = _summarizer(wire, stub, timeout_s=1.0, max_retries=3)
    began = time.monotonic()
    with pytest.raises(EngineError) as caught:
        summarizer.summarize(TRANSCRIPT)
    assert caught.value.code == "engine_timeout"
    assert time.monotonic() - began < 10   # not the server's 30 s; wide for a loaded machine
    assert len(stub.requests_to(wire.path)) == 1  # a timeout is not retried: the budget is spent


@pytest.mark.parametrize("body", [b"{not json", b'{"unexpected": true}', b'{"choices": [], "content": []}'],
                         ids=["garbage", "wrong-shape", "empty"])
def test_cloud_malformed_answer_is_engine_error(wire, stub: HTTPStub, body: bytes) -> None:
    stub.route("POST", wire.path, lambda request: Reply(200, body, {"Content-Type": "application/json"}))
    summarizer = _summarizer(wire, stub)
    with pytest.raises(EngineError) as caught:
        summarizer.summarize(TRANSCRIPT)
    assert caught.value.code == "engine_error"


def test_cloud_without_key_is_engine_unavailable(wire, stub: HTTPStub) -> None:
    summarizer = make_summarizer(wire.settings(stub.url, api_key=None))
    for call in (summarizer.load, lambda: summarizer.summarize(TRANSCRIPT)):
        with pytest.raises(EngineError) as caught:
            call()
        assert caught.value.code == "engine_unavailable"
    assert not stub.requests


def test_cloud_short_text_needs_no_call(wire, stub: HTTPStub) -> None:
    summarizer = _summarizer(wire, stub)
    assert summarizer.summarize("Lights off.").text == "Lights off."
    assert not stub.requests


def test_cloud_key_is_never_logged_or_reported(wire, stub: HTTPStub, caplog, monkeypatch) -> None:
    from agent.engines import http_retry
    monkeypatch.setattr(http_retry, "_sleep", lambda s: None)
    stub.route("POST", wire.path, lambda request: Reply(401, b'{"error": "invalid key"}'))
    caplog.set_level(logging.DEBUG)
    summarizer = _summarizer(wire, stub)
    with pytest.raises(EngineError) as caught:
        summarizer.summarize(TRANSCRIPT)
    assert caught.value.code == "engine_error"
    assert KEY not in caplog.text and KEY not in str(caught.value.as_dict())


def test_cloud_engines_are_registered() -> None:
    assert isinstance(make_summarizer(SummarizerSettings(engine="openai")), OpenAISummarizer)
    assert isinstance(make_summarizer(SummarizerSettings(engine="anthropic")), AnthropicSummarizer)
    assert isinstance(make_summarizer(SummarizerSettings(engine="llama_server")), LlamaServerSummarizer)
