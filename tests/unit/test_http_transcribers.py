"""The HTTP transcription engines (OpenAI, whisper.cpp server) against in-process HTTP stand-ins
speaking the real wire protocols: request shape, retries, timeouts, malformed answers.
"""

from __future__ import annotations

import socket
import sys
import time

import numpy as np
import pytest

from agent.engines import make_transcriber
from agent.engines import http_retry
from agent.audio.clip import Audio
from agent.engines.base import Transcript
from agent.errors import EngineError
from agent.settings import OpenAITranscriberSettings, TranscriberSettings, WhisperServerSettings
from tests.support import http_stub
from tests.support.http_stub import HTTPStub, Reply, json_reply, sequence, whisper_server_routes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OPENAI_PATH = "/v1/audio/transcriptions"


@pytest.fixture
def stub() -> HTTPStub:
    with HTTPStub() as server:
        yield server


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry waits instead of sleeping, so the retry tests take milliseconds."""
    recorded: list[float] = []
    monkeypatch.setattr(http_retry, "_sleep", recorded.append)
    return recorded


def openai_engine(stub: HTTPStub, timeout_s: float = 30.0) -> object:
    return make_transcriber(TranscriberSettings(
        engine="openai", language="en", timeout_s=timeout_s,
        openai=OpenAITranscriberSettings(base_url=stub.url + "/v1/", model="whisper-test", api_key="sk-test")))


def server_engine(stub: HTTPStub, timeout_s: float = 30.0) -> object:
    return make_transcriber(TranscriberSettings(
        engine="whisper_server", language="en", timeout_s=timeout_s,
        whisper_server=WhisperServerSettings(url=stub.url)))


ENGINES = {
    "openai": (openai_engine, OPENAI_PATH),
    "whisper_server": (server_engine, "/inference"),
}


@pytest.fixture(params=sorted(ENGINES))
def http_engine(request: pytest.FixtureRequest, stub: HTTPStub) -> tuple[object, str]:
    build, path = ENGINES[request.param]
    engine = build(stub)
    engine.load()
    yield engine, path
    engine.close()


def short_audio() -> Audio:
    t = np.arange(8000) / 16000
    return Audio((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16))


def test_openai_sends_a_correct_request(stub: HTTPStub) -> None:
    stub.route("POST", OPENAI_PATH, lambda req: json_reply({"text": " Hello there. "}))
    engine = openai_engine(stub)
    engine.load()
    result = engine.transcribe(short_audio())
    assert result == Transcript(text="Hello there.", engine="openai", language="en")
    (request,) = stub.requests
    assert request.header("Authorization") == "Bearer sk-test"
    parts = request.multipart()
    assert parts["model"].text == "whisper-test"
    assert parts["language"].text == "en"
    assert parts["response_format"].text == "json"
    assert parts["file"].filename == "audio.wav" and parts["file"].content_type == "audio/wav"
    assert http_stub.check_wav(parts["file"].data) == (1, 2, 16000, 8000)


def test_whisper_server_sends_a_correct_request(stub: HTTPStub) -> None:
    stub.reset(whisper_server_routes("  hello\n from the stub ").items())
    engine = server_engine(stub)
    engine.load()
    assert engine.transcribe(short_audio()).text == "hello from the stub"
    assert stub.errors == []  # the stand-in's protocol checks all passed
    parts = stub.requests[0].multipart()
    assert parts["language"].text == "en" and parts["temperature"].text == "0.0"


def test_retry_after_429_then_success(http_engine: tuple[object, str], stub: HTTPStub,
                                      waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, sequence(Reply(429, b"slow down", {"Retry-After": "2"}), json_reply({"text": "ok"})))
    assert engine.transcribe(short_audio()).text == "ok"
    assert len(stub.requests_to(path)) == 2
    assert waits == [2.0]


def test_repeated_500_is_engine_error(http_engine: tuple[object, str], stub: HTTPStub, waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, lambda req: Reply(500, b"boom"))
    with pytest.raises(EngineError) as info:
        engine.transcribe(short_audio())
    assert info.value.code == "engine_error" and "500" in info.value.message
    module = sys.modules[type(engine).__module__]
    assert len(stub.requests_to(path)) == module.MAX_RETRIES + 1
    assert len(waits) == module.MAX_RETRIES


def test_client_error_is_not_retried(http_engine: tuple[object, str], stub: HTTPStub, waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, lambda req: json_reply({"error": "bad key"}, status=401))
    with pytest.raises(EngineError) as info:
        engine.transcribe(short_audio())
    assert info.value.code == "engine_error" and len(stub.requests_to(path)) == 1 and waits == []


def test_slow_server_is_engine_timeout(stub: HTTPStub) -> None:
    for build, path in ENGINES.values():
        stub.route("POST", path, lambda req: Reply(200, b'{"text": "late"}', delay_s=30))
        engine = build(stub, timeout_s=0.5)
        engine.load()
        started = time.monotonic()
        with pytest.raises(EngineError) as info:
            engine.transcribe(short_audio())
        assert info.value.code == "engine_timeout"
        assert time.monotonic() - started < 10   # not the server's 30 s; wide for a loaded machine
        engine.close()


@pytest.mark.parametrize("body", [b"{not json", b'{"no_text": 1}', b"[]"])
def test_malformed_answer_is_engine_error(http_engine: tuple[object, str], stub: HTTPStub, body: bytes) -> None:
    engine, path = http_engine
    stub.route("POST", path, lambda req: Reply(200, body, {"Content-Type": "application/json"}))
    with pytest.raises(EngineError) as info:
        engine.transcribe(short_audio())
    assert info.value.code == "engine_error"


def test_batch_keeps_order_and_isolates_failures(http_engine: tuple[object, str], stub: HTTPStub,
                                                 waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, sequence(json_reply({"text": "one"}), Reply(400, b"bad"), json_reply({"text": "three"})))
    results = engine.transcribe_batch([short_audio(), short_audio(), short_audio()])
    assert [r.text if isinstance(r, Transcript) else r.code for r in results] == ["one", "engine_error", "three"]


def test_retry_after_http_date_and_cap(stub: HTTPStub, waits: list[float]) -> None:
    from email.utils import formatdate

    stub.route("POST", "/x", sequence(
        Reply(503, b"", {"Retry-After": formatdate(time.time() + 3, usegmt=True)}),
        Reply(503, b"", {"Retry-After": "3600"}),
        json_reply({"ok": True}),
    ))
    response = http_retry.post_with_retries(http_retry.make_session(), stub.url + "/x", max_retries=3,
                                            timeout_s=5, max_wait_s=30, json={})
    assert response.json() == {"ok": True}
    assert 1.0 <= waits[0] <= 3.0 and waits[1] == 30


def test_unreachable_server_is_engine_error(waits: list[float]) -> None:
    with pytest.raises(EngineError) as info:
        http_retry.post_with_retries(http_retry.make_session(), f"http://127.0.0.1:{free_port()}/x",
                                     max_retries=1, timeout_s=2)
    assert info.value.code == "engine_error" and len(waits) == 1
