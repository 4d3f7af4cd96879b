"""The idle agent leaves numpy (15 MB resident) unloaded until audio arrives.

Why a test: the idle RSS budget (issue #7, <= 40 MB with the engines in their own processes) is
met only while nothing on the start path imports numpy, and any new top-level import can undo
that silently. Seen from outside: the shared objects mapped into the running agent's process.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.models import speech_wav
from tests.support.wait import wait_until
from tests.support.whisper_cpp_standin import whisper_cpp_standin
from tests.support.inbox import drop, wait_files

NUMPY_CORE = "_multiarray_umath"


def mapped(pid: int, name: str) -> bool:
    return name in Path(f"/proc/{pid}/maps").read_text()


def test_numpy_loads_with_the_first_audio_not_at_start(make_agent, probe, tmp_path):
    binary, model = whisper_cpp_standin(tmp_path / "whisper")
    agent = make_agent({"transcriber": {"engine": "whisper_cpp",
                                        "whisper_cpp": {"binary": str(binary), "model": str(model)}}}).start(probe)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=30,
                   what="whisper.cpp warmed up")
    assert not mapped(agent.proc.pid, NUMPY_CORE), "numpy was loaded before any audio arrived"

    drop(agent.inbox, "hello.wav", speech_wav("hello there", tmp_path / "hello.wav").read_bytes())
    wait_files(agent.inbox / "processed", "hello.wav.json", 1)
    # The same check sees numpy once a job needed it, so the assertion above can fail.
    wait_until(lambda: mapped(agent.proc.pid, NUMPY_CORE), timeout=5, what="numpy mapped after a job")
