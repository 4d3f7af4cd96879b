"""4. Footprint: start-up time, agent memory, import time, each engine's resident memory.

- `voice-agent run` to retained `online`, alternating an agent whose transcriber runs out of
  process (whisper_cpp, the realistic Pi set-up) with one on the model-free engine; the engine's
  own load (lazy, in the background) is reported separately from the state it publishes.
- RSS of the agent process idle (2 s after its engines reported ready) and after 100 jobs; the
  budget row is the Pi set-up, whisper.cpp and the llama.cpp server in their own processes.
- `python -X importtime -c "import agent.app"`: the sum of the top-level cumulative times.
- each engine loaded in a child process of its own (bench/engine_child.py rss).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (REPO, Dist, Results, agent_config, engine_settings, rss_mb, speech_files, start_agent,
                          unique_copy, wait_engines_ready, write_closed)

SECTION = "4 footprint"


def import_time_ms() -> tuple[float, dict[str, float]]:
    """Sum of the top-level cumulative times, and the cumulative time of each module that
    agent.app imports directly or one level down (where the cost comes from)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import agent.app"], cwd=REPO,
                         capture_output=True, text=True, check=True).stderr
    total, parts_ms = 0.0, {}
    for line in out.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line.split("|")
        name = parts[2]
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        if depth == 0:
            total += float(parts[1])
        elif depth in (1, 2) and not name.strip().startswith("agent"):
            parts_ms[name.strip()] = max(parts_ms.get(name.strip(), 0.0), float(parts[1]) / 1000)
    return total / 1000, parts_ms


def _free_port() -> int:
    from tests.support.broker import free_port
    return free_port()


def _llama_summarizer() -> dict | None:
    """The kept llama.cpp server with Gemma 270M, or None where it is not installed."""
    try:
        from tests.support.broker import free_port
        from tests.support.llama import gemma_model_path, llama_server_command
        return {"engine": "llama_server", "max_tokens": 16, "min_words": 3,
                "llama_server": {"command": llama_server_command(), "model": str(gemma_model_path()),
                                 "port": free_port()}}
    except Exception:  # noqa: BLE001 - no llama.cpp here: the variant is skipped
        return None


def startup(res: Results, work: Path, port: int, rounds: int, quick: bool) -> None:
    """Start-up time and idle RSS. The RSS budget is for engines in their own processes (whisper.cpp,
    the llama.cpp server): bench_metadata runs inside the agent, so its row is information only."""
    variants: dict[str, dict] = {
        "whisper_cpp": {"transcriber": engine_settings("whisper_cpp")},
        "bench_metadata": {"transcriber": {"engine": "bench_metadata"}},
        # Home Assistant Assist over Wyoming on loopback (its own thread and loop, the wyoming package)
        "whisper_cpp + wyoming": {"transcriber": engine_settings("whisper_cpp"),
                                  "wyoming": {"enabled": True, "stt_port": _free_port()}},
    }
    llama = None if quick else _llama_summarizer()
    if llama is not None:
        variants["whisper_cpp + llama_server"] = {"transcriber": engine_settings("whisper_cpp"), "summarizer": llama}
    out_of_process = {"whisper_cpp", "whisper_cpp + llama_server", "whisper_cpp + wyoming"}
    online: dict[str, list[float]] = {k: [] for k in variants}
    ready: dict[str, list[float]] = {k: [] for k in variants}
    idle: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            agent, watcher, t_online = start_agent(work / f"b4-start-{name.replace(' + ', '-')}-{i}", port,
                                                   agent_config(**variants[name]))
            t_start = agent.bench_t0
            try:
                state = wait_engines_ready(watcher, agent.root, timeout=120)
                online[name].append(t_online * 1000)
                if state:
                    ready[name].append((state["_t"] - t_start) * 1000)
                time.sleep(2.0)
                idle[name].append(rss_mb(agent.proc.pid))
            finally:
                watcher.close()
                agent.stop()
    for name in names:
        d = Dist(online[name])
        res.add(SECTION, f"run -> online, {name}", d.spread("{:.0f}") + " ms", "<= 1500 ms",
                d.median <= 1500)
        if ready[name]:
            res.add(SECTION, f"run -> engines ready (lazy, background), {name}",
                    Dist(ready[name]).spread("{:.0f}") + " ms",
                    note="load = warm-up runs (one whisper.cpp run; llama server start + one completion)"
                    if name in out_of_process else "")
        d = Dist(idle[name])
        if name in out_of_process:
            res.add(SECTION, f"agent RSS idle, engines warm, {name}", d.spread("{:.1f}") + " MB", "<= 40 MB",
                    d.median <= 40, note="engines in their own processes; numpy loads with the first audio")
        else:
            res.add(SECTION, f"agent RSS idle, engine loaded in the agent, {name}", d.spread("{:.1f}") + " MB",
                    note="an in-process engine: outside the budget's terms; numpy is loaded by the engine")
    res.raw["startup"] = {"online_ms": online, "ready_ms": ready, "idle_rss_mb": idle}


def after_jobs(res: Results, work: Path, port: int) -> None:
    agent, watcher, _ = start_agent(work / "b4-jobs", port, agent_config(transcriber={"engine": "bench_metadata"}))
    try:
        wait_engines_ready(watcher, agent.root, timeout=60)
        time.sleep(1.0)
        before = rss_mb(agent.proc.pid)
        data = speech_files()[1].read_bytes()
        topic = f"{agent.root}/event/transcript"
        for i in range(100):
            write_closed(agent.inbox / f"j{i:03d}.wav", unique_copy(data, i))
        if not watcher.wait_count(topic, 100, 120):
            raise RuntimeError(f"only {watcher.count(topic)} of 100 jobs done")
        time.sleep(1.0)
        after = rss_mb(agent.proc.pid)
    finally:
        watcher.close()
        agent.stop()
    res.add(SECTION, "agent RSS before / after 100 jobs (bench_metadata)",
            f"{before:.1f} / {after:.1f} MB (+{after - before:.1f})")
    res.raw["after_jobs"] = {"before_mb": before, "after_mb": after}


def imports(res: Results, rounds: int) -> None:
    import_time_ms()   # the first run also compiles byte code: not what a device pays
    totals, tops = [], []
    for _ in range(rounds):
        total, top = import_time_ms()
        totals.append(total)
        tops.append(top)
    heavy = {}
    for top in tops:
        for k, v in top.items():
            heavy.setdefault(k, []).append(v)
    biggest = sorted(((Dist(v).median, k) for k, v in heavy.items()), reverse=True)[:6]
    res.add(SECTION, "import agent.app (sum of top-level cumulative)", Dist(totals).spread("{:.0f}") + " ms",
            note="largest third-party parts (ms): " + ", ".join(f"{k} {ms:.0f}" for ms, k in biggest))
    modules = subprocess.run([sys.executable, "-c", "import sys, agent.app; "
                              "print(','.join(m for m in ('numpy','watchdog','psutil','yaml','paho','requests') "
                              "if m in sys.modules))"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    res.add(SECTION, "heavy modules loaded by import agent.app", modules or "none")
    res.raw["imports"] = {"total_ms": totals, "top_ms": heavy}


def engines(res: Results, work: Path, quick: bool) -> None:
    sample = speech_files()[2]
    text = work / "b4-text.txt"
    text.write_text("The council met on Monday to discuss the new bridge over the river. The bridge will cost "
                    "four million euros and take two years to build. Several residents asked about noise.")
    cases: list[tuple[str, dict, Path]] = [
        ("bench_metadata", {"transcriber": {"engine": "bench_metadata"}}, sample),
        ("pocketsphinx", {"transcriber": engine_settings("pocketsphinx")}, sample),
        ("whisper_cpp", {"transcriber": engine_settings("whisper_cpp")}, sample),
        ("faster_whisper", {"transcriber": engine_settings("faster_whisper")}, sample),
    ]
    llama = None if quick else _llama_summarizer()
    if llama is not None:
        cases.append(("llama_server (Gemma 270M)", {"transcriber": {"engine": "bench_metadata"}, "summarizer": llama},
                      text))
    else:
        res.add(SECTION, "engine RSS llama_server", "n/a", status="SKIP",
                note="full run only" if quick else "llama.cpp server or Gemma model not installed")
    raw = {}
    for name, settings, arg in cases:
        try:
            out = subprocess.run([sys.executable, str(REPO / "bench/engine_child.py"), "rss", json.dumps(settings),
                                  str(arg)], cwd=REPO, capture_output=True, text=True, timeout=600)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode != 0 or not line:
                raise RuntimeError((out.stderr or out.stdout).strip().splitlines()[-1][:200])
            d = json.loads(line[-1])
        except Exception as exc:  # noqa: BLE001
            res.add(SECTION, f"engine RSS {name}", "failed", status="SKIP", note=str(exc)[:150])
            continue
        raw[name] = d
        parts = [f"in the loading process +{d['rss_mb'] - d['rss_before_mb']:.0f} MB "
                 f"(process {d['rss_mb']:.0f}, peak {d['hwm_mb']:.0f})"]
        if d.get("server_rss_mb"):
            parts.append(f"server {d['server_rss_mb']:.0f} MB (peak {d['server_hwm_mb']:.0f})")
        elif d.get("children_maxrss_mb") and name == "whisper_cpp":
            parts.append(f"whisper.cpp child peak {d['children_maxrss_mb']:.0f} MB")
        res.add(SECTION, f"engine RSS {name}", "; ".join(parts), note=f"load {d.get('load_ms', 0):.0f} ms")
    res.raw["engine_rss"] = raw


def run(res: Results, work: Path, port: int, quick: bool) -> None:
    imports(res, 3 if quick else 7)
    startup(res, work, port, 1 if quick else 5, quick)
    after_jobs(res, work, port)
    engines(res, work, quick)
