"""Engines measured in a process of their own (no agent around them).

    python bench/engine_child.py serve  '<settings json>'   # the bare-engine loop of bench/pipeline_overhead.py
    python bench/engine_child.py rss    '<settings json>' WAV  # resident memory of one engine

`serve` loads the transcriber, prints one JSON line `{"ready": ...}`, then for every WAV path read
from standard input decodes it (untimed) and prints `{"ms": <engine.transcribe time>, "text": ...}`.
This is "the engine class directly in a plain script": what the agent adds is everything else.

`rss` loads the engine, runs it once on WAV (or on a text for a summarizer) and prints the
resident memory of this process and of the engine's own child processes (whisper.cpp, the
llama.cpp server), since an engine that runs out of process is only cheap for the agent.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VOICE_AGENT_TEST_ENGINES", "1")   # may run the test engine bench_metadata


def _status_mb(pid: int | str, key: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _settings(raw: str):
    from agent.config import parse_settings
    return parse_settings(json.loads(raw), base_dir=Path.cwd())


def serve(raw: str) -> int:
    from agent.audio.wav import decode_file
    from agent.engines import make_transcriber

    t0 = time.perf_counter()
    engine = make_transcriber(_settings(raw).transcriber)
    engine.load()
    print(json.dumps({"ready": True, "load_ms": round((time.perf_counter() - t0) * 1000, 1),
                      "rss_mb": _status_mb("self", "VmRSS")}), flush=True)
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        audio = decode_file(Path(path))
        t = time.perf_counter()
        transcript = engine.transcribe(audio)
        ms = (time.perf_counter() - t) * 1000
        print(json.dumps({"ms": round(ms, 2), "text": transcript.text}), flush=True)
    engine.close()
    return 0


def rss(raw: str, sample: str) -> int:
    settings = _settings(raw)
    before = _status_mb("self", "VmRSS")
    t0 = time.perf_counter()
    kind = "summarizer" if settings.transcriber.engine == "bench_metadata" and \
        settings.summarizer.engine not in ("extractive", "none") else "transcriber"
    out: dict = {"kind": kind, "rss_before_mb": before}
    if kind == "transcriber":
        from agent.audio.wav import decode_file
        from agent.engines import make_transcriber
        engine = make_transcriber(settings.transcriber)
        engine.load()
        out["load_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        engine.transcribe(decode_file(Path(sample)))
        out["name"] = engine.name
    else:
        from agent.engines import make_summarizer
        engine = make_summarizer(settings.summarizer)
        engine.load()
        out["load_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        engine.summarize(Path(sample).read_text())
        out["name"] = engine.name
        server = getattr(engine, "server", None)
        pid = getattr(server, "pid", None)
        if pid:
            out["server_rss_mb"] = _status_mb(pid, "VmRSS")
            out["server_hwm_mb"] = _status_mb(pid, "VmHWM")
    out["rss_mb"] = _status_mb("self", "VmRSS")
    out["hwm_mb"] = _status_mb("self", "VmHWM")
    engine.close()
    # ru_maxrss of reaped children (whisper.cpp runs), in kB on Linux.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["children_maxrss_mb"] = round(children / 1024, 1) if children else None
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        sys.exit(serve(sys.argv[2]))
    if mode == "rss":
        sys.exit(rss(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(64)
