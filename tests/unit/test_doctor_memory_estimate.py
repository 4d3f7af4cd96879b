"""`voice-agent doctor`'s memory estimate follows the kept server's binary: llama.cpp's own
`llama-server` holds about 336 MB with Gemma 270M, llama-cpp-python's server 430-630 MB
(docs/performance.md, "Kept server"), so one figure for both would refuse or pass the wrong setups."""

from __future__ import annotations

from pathlib import Path

from agent.ops import doctor
from agent.settings import LlamaServerSettings, Settings, SummarizerSettings


def _need(model: Path, command: list[str]) -> float:
    summarizer = SummarizerSettings(engine="llama_server",
                                    llama_server=LlamaServerSettings(command=command, model=str(model)))
    return doctor.engine_mb(Settings(summarizer=summarizer))["summarizer llama_server"]


def test_native_server_is_estimated_below_the_python_server(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"\0" * (10 * 1024 * 1024))
    native = _need(model, ["/opt/llama/llama-server", "--port", "{port}"])
    python = _need(model, ["python3", "-m", "llama_cpp.server", "--port", "{port}"])
    assert native == doctor.PROGRAM_OVERHEAD_MB["llama_server_native"] + 10
    assert python == doctor.PROGRAM_OVERHEAD_MB["llama_server"] + 10
    assert native < python
