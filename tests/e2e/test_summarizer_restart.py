"""The summarizer restart hook replaces the model server process (the llama stand-in, tests/support)."""

from __future__ import annotations

import time
import types
from pathlib import Path

import psutil

from tests.support.broker import free_port
from tests.support.llama_standin import llama_standin_command, reply_for


def test_summarizer_restart_hook_replaces_the_server(tmp_path: Path) -> None:
    """app.engines.summarizer.restart() on a llama_server engine: a new server process, still serving."""
    from agent.engines.runtime import EngineSlot
    from agent.engines.llama_server import LlamaServerSummarizer
    from agent.engines.openai_chat import render_prompt
    from agent.settings import LlamaServerSettings, SummarizerSettings
    settings = SummarizerSettings(engine="llama_server", min_words=3, llama_server=LlamaServerSettings(
        command=llama_standin_command(), port=free_port(), start_timeout_s=20,
        health_interval_s=60))
    slot = EngineSlot("summarizer", lambda: LlamaServerSummarizer(settings), "llama_server", lambda: None)
    slot.start()
    try:
        engine = slot.get(30)
        first = slot.server_pid
        assert first is not None
        assert slot.restart() is True
        deadline = time.monotonic() + 20
        while slot.server_pid in (None, first):
            assert time.monotonic() < deadline, "the server was not restarted"
            time.sleep(0.05)
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
        text = "one two three four five six"
        assert engine.summarize(text).text == reply_for(render_prompt(settings.prompt, text))
    finally:
        slot.close()
    extractive = EngineSlot("summarizer", lambda: types.SimpleNamespace(load=lambda: None), "extractive",
                            lambda: None)
    extractive.start()
    extractive.get(5)
    assert extractive.server_pid is None and extractive.restart() is False
