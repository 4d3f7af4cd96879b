"""Checks shared by the two kept-server suites (llama-cpp-python's server and llama.cpp's native
`llama-server`): the same failure handling must hold whichever server the summarizer keeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time

import pytest

from agent.engines.llama_server import LlamaServerSummarizer
from agent.errors import EngineError
from agent.settings import LlamaServerSettings, SummarizerSettings
from tests.support.broker import free_port
from tests.support.llama import wait_gone


def llama_settings(command: list[str] | None, max_tokens: int = 48, **options) -> SummarizerSettings:
    """Settings for the llama_server engine on a free loopback port (unless `port` is given)."""
    options.setdefault("port", free_port())
    return SummarizerSettings(engine="llama_server", min_words=5, max_tokens=max_tokens,
                              llama_server=LlamaServerSettings(command=command, **options))


def close_all(made: list[LlamaServerSummarizer]) -> None:
    """Close every summarizer a fixture made and require that its server process is gone."""
    for summarizer in made:
        pid = summarizer.server.pid if summarizer.server else None
        summarizer.close()
        if pid is not None:
            assert wait_gone(pid), "server outlived close()"


def check_restart_after_kill_9(summarizer: LlamaServerSummarizer, transcript: str) -> None:
    """A server killed between calls is replaced and the next call is answered."""
    assert summarizer.summarize(transcript).text
    old_pid = summarizer.server.pid
    os.kill(old_pid, signal.SIGKILL)
    assert wait_gone(old_pid)
    assert summarizer.summarize(transcript).text
    assert summarizer.server.restarts >= 1 and summarizer.server.pid != old_pid


def check_killed_mid_request_is_retried(summarizer: LlamaServerSummarizer, transcript: str) -> None:
    """The OOM killer's case: the answer never comes, the caller still gets a summary."""
    victim = summarizer.server.pid
    killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
    killer.start()
    try:
        assert summarizer.summarize(f"{transcript} This one is interrupted.").text
    finally:
        killer.cancel()
    assert summarizer.server.restarts == 1 and summarizer.server.pid != victim


def check_hung_server_is_replaced(summarizer: LlamaServerSummarizer, transcript: str) -> None:
    """A SIGSTOPped server makes the call time out (after the summarizer's timeout_s, not much
    later), is killed rather than continued, and a new server answers the next call."""
    timeout_s = summarizer.options.timeout_s
    hung_pid = summarizer.server.pid
    os.kill(hung_pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(EngineError) as caught:
            summarizer.summarize(transcript)
        assert caught.value.code == "engine_timeout"
        assert time.monotonic() - began < timeout_s + 3
        assert wait_gone(hung_pid)  # killed, not merely continued
        # Only the hang needed the short timeout; on a busy machine a fresh server can be slow.
        summarizer.options = dataclasses.replace(summarizer.options, timeout_s=60.0)
        assert summarizer.summarize(transcript).text
        assert summarizer.server.restarts >= 1 and summarizer.server.pid != hung_pid
    finally:
        if not wait_gone(hung_pid, timeout_s=0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung_pid, signal.SIGKILL)
