"""The whisper_server engine starts its server from a configured command (a child process)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import psutil

from agent.engines import make_transcriber
from agent.audio.clip import Audio
from agent.settings import TranscriberSettings, WhisperServerSettings
from tests.support.broker import free_port
from tests.support import http_stub


def short_audio() -> Audio:
    t = np.arange(8000) / 16000
    return Audio((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16))


def test_whisper_server_started_from_command() -> None:
    """Mode 2: the agent starts the server (here the stand-in as a real child process)."""
    port = free_port()
    command = [sys.executable, str(Path(http_stub.__file__)), "--port", "{port}", "--text", "from a child"]
    engine = make_transcriber(TranscriberSettings(
        engine="whisper_server", whisper_server=WhisperServerSettings(command=command, port=port, timeout_s=20)))
    engine.load()
    try:
        pid = engine._server.pid
        assert pid is not None and engine.url == f"http://127.0.0.1:{port}"
        assert engine.transcribe(short_audio()).text == "from a child"
    finally:
        engine.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
