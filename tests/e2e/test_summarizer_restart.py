"""The summarizer restart hook replaces a real model server process."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import psutil

from tests.support.broker import free_port


STANDIN_LLAMA = '''
"""STAND-IN for llama.cpp's server (tests/e2e/test_summarizer_restart.py): /health and a canned chat answer."""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200 if self.path == "/health" else 404, b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant",
                                                              "content": "stand-in summary"}}]}).encode())

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
'''


def test_summarizer_restart_hook_replaces_the_server(tmp_path: Path) -> None:
    """app.engines.summarizer.restart() on a llama_server engine: a new server process, still serving."""
    from agent.engines.runtime import EngineSlot
    from agent.engines.llama_server import LlamaServerSummarizer
    from agent.settings import LlamaServerSettings, SummarizerSettings
    script = tmp_path / "llama_standin.py"
    script.write_text(STANDIN_LLAMA)
    settings = SummarizerSettings(engine="llama_server", min_words=3, llama_server=LlamaServerSettings(
        command=[sys.executable, str(script), "--port", "{port}"], port=free_port(), start_timeout_s=20,
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
        assert engine.summarize("one two three four five six").text == "stand-in summary"
    finally:
        slot.close()
    extractive = EngineSlot("summarizer", lambda: types.SimpleNamespace(load=lambda: None), "extractive",
                            lambda: None)
    extractive.start()
    extractive.get(5)
    assert extractive.server_pid is None and extractive.restart() is False
