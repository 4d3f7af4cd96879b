"""1. Pipeline overhead: the bare engine in a plain script versus the whole agent path.

For each engine, one child process holds the engine class (bench/engine_child.py serve) and one
agent runs it behind its inbox. Files are taken in alternating order (bare, agent, agent, bare,
...), each a unique copy of an espeak-ng sentence so that the agent's content-hash cache never
answers. The agent path is timed from the moment the file is closed in the inbox until a
subscriber receives its `event/transcript`.

Two overhead figures:
- end-to-end minus the bare engine call on the same audio (paired; carries the engine's own
  run-to-run noise, which on 2 shared cores is larger than the overhead itself);
- end-to-end minus the engine time the agent itself reports (`timings_ms.transcribe`) in the
  same job: what the agent adds around the engine, free of engine noise. Budgets use this one.
Also the first job after start versus the steady state (its rows are headed "8 warm-up").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (REPO, Dist, Results, agent_config, engine_settings, fmt_ms, ratios, speech_files,
                          start_agent, unique_copy, wait_engines_ready, wav_duration_s, write_closed)

SECTION = "1 pipeline"
STEPS = ("close -> queued (inotify + settle)", "queued -> running (feeder, claim)",
         "running -> transcript, less engine", "transcript emitted -> received (outbox, MQTT)")


def _epoch(ts: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Bare:
    def __init__(self, settings: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "bench/engine_child.py"), "serve",
                                      json.dumps({"transcriber": settings})],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.ready = json.loads(self.proc.stdout.readline())

    def run(self, path: Path) -> float:
        self.proc.stdin.write(str(path) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["ms"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run(res: Results, work: Path, broker_port: int, quick: bool, engines: tuple[str, ...]) -> dict:
    files = speech_files()
    durations = {p: wav_duration_s(p) for p in files}
    data = {p: p.read_bytes() for p in files}
    raw: dict = {}
    for engine in engines:
        rounds = (12 if quick else 60) if engine == "bench_metadata" else (2 if quick else 10)
        settings = engine_settings(engine)
        bare = Bare(settings)
        agent, watcher, _ = start_agent(work / f"b1-{engine}", broker_port, agent_config(
            transcriber=settings, summarizer={"engine": "extractive"}, inbox={"settle_ms": 1000}))
        try:
            state = wait_engines_ready(watcher, agent.root, timeout=180)
            if not state or not state["engines"]["transcriber"].get("ready"):
                res.add(SECTION, f"{engine}", "engine did not load", status="SKIP",
                        note=str((state or {}).get("engines")))
                continue
            stage = work / f"b1-{engine}-stage"
            stage.mkdir(parents=True, exist_ok=True)
            bare_ms: list[float] = []
            e2e_ms: list[float] = []
            engine_ms: list[float] = []
            inner: list[float] = []
            audio_s: list[float] = []
            steps: dict[str, list[float]] = {k: [] for k in STEPS}
            n = 0

            def one_bare(path: Path, i: int) -> None:
                copy = stage / f"bare{i}.wav"
                copy.write_bytes(unique_copy(data[path], i))
                bare_ms.append(bare.run(copy))

            def one_agent(path: Path, i: int) -> None:
                name = f"f{i:03d}.wav"
                before = len(watcher.find(f"{agent.root}/event/transcript"))
                time.sleep(0.05)   # independent arrivals: not within MOVE_PAIRING_S of the last claim
                t_close = write_closed(agent.inbox / name, unique_copy(data[path], i))
                wall_close = time.time() - (time.monotonic() - t_close)
                ok = watcher.wait(lambda: len(watcher.find(f"{agent.root}/event/transcript",
                                                           lambda b: b["source"]["name"] == name)) > 0, 300)
                if not ok:
                    raise RuntimeError(f"{engine}: no transcript for {name}")
                t_recv, body = watcher.find(f"{agent.root}/event/transcript",
                                            lambda b: b["source"]["name"] == name)[0]
                e2e_ms.append((t_recv - t_close) * 1000)
                engine_ms.append(body["timings_ms"]["transcribe"])
                inner.append(body["timings_ms"].get("total", 0.0))
                audio_s.append(body["audio_s"])
                del before
                jobs = {b["state"]: _epoch(b["ts"]) for _, b in watcher.find(
                    f"{agent.root}/event/job", lambda b: b.get("job_id") == body["job_id"])}
                t_tr = _epoch(body["ts"])
                wall_recv = time.time() - (time.monotonic() - t_recv)
                if "queued" in jobs and "running" in jobs:
                    steps["close -> queued (inotify + settle)"].append((jobs["queued"] - wall_close) * 1000)
                    steps["queued -> running (feeder, claim)"].append((jobs["running"] - jobs["queued"]) * 1000)
                    steps["running -> transcript, less engine"].append(
                        (t_tr - jobs["running"]) * 1000 - body["timings_ms"]["transcribe"])
                    steps["transcript emitted -> received (outbox, MQTT)"].append((wall_recv - t_tr) * 1000)

            longest_file = max(files, key=lambda f: durations[f])
            others = [f for f in files if f != longest_file]
            for r in range(rounds):
                # every other file is the ~5 s utterance (the budget's case); the first one too, so
                # the first job can be compared with later jobs on the same audio
                path = longest_file if r % 2 == 0 else others[(r // 2) % len(others)]
                if r % 2 == 0:
                    one_bare(path, n)
                    one_agent(path, n)
                else:
                    one_agent(path, n)
                    one_bare(path, n)
                n += 1
            overhead_direct = Dist([e - g for e, g in zip(e2e_ms, engine_ms)])
            overhead_paired = Dist([e - b for e, b in zip(e2e_ms, bare_ms)])
            ratio = ratios(e2e_ms, bare_ms)
            # the 5-second utterance: the longest sentence
            longest = max(durations.values())
            long_idx = [i for i, a in enumerate(audio_s) if abs(a - longest) < 0.05]
            share = Dist([(e2e_ms[i] - engine_ms[i]) / engine_ms[i] * 100 for i in long_idx if engine_ms[i] > 0])
            res.add(SECTION, f"{engine}: bare engine per file", Dist(bare_ms).spread("{:.0f}") + " ms",
                    note=f"audio {min(audio_s):.1f}-{max(audio_s):.1f} s")
            res.add(SECTION, f"{engine}: end-to-end per file", Dist(e2e_ms).spread("{:.0f}") + " ms")
            if engine != "bench_metadata":
                res.add(SECTION, f"{engine}: ratio end-to-end / bare", ratio.spread("{:.3f}"))
            res.add(SECTION, f"{engine}: overhead e2e - bare (paired)", overhead_paired.spread("{:.0f}") + " ms",
                    note="engine noise included")
            res.add(SECTION, f"{engine}: agent overhead (e2e - engine in same job)",
                    overhead_direct.spread("{:.1f}") + " ms", "p50 <= 20 ms", overhead_direct.median <= 20,
                    note="; ".join(f"{k} {Dist(v).median:.1f}" for k, v in steps.items() if v) + " (ms, p50)")
            if share.values and engine != "bench_metadata":
                res.add(SECTION, f"{engine}: overhead share, {longest:.1f} s utterance",
                        share.spread("{:.2f}") + " %", "<= 5 %", share.median <= 5)
            # warm-up: the first job after the engine was ready versus the rest
            first, rest = e2e_ms[0], Dist(e2e_ms[1:])
            same_audio = [e for e, a in zip(e2e_ms[1:], audio_s[1:]) if abs(a - audio_s[0]) < 0.05]
            steady = Dist(same_audio) if same_audio else rest
            warm = first / steady.median if steady.values else float("nan")
            # the same for the bare engine, measured alongside: a slow first run there too is the
            # engine or the machine at that moment, not the agent's warm-up
            bare_same = [b for b, a in zip(bare_ms[1:], audio_s[1:]) if abs(a - audio_s[0]) < 0.05]
            bare_warm = bare_ms[0] / Dist(bare_same).median if bare_same else float("nan")
            res.add("8 warm-up", f"{engine}: first job / steady state (same audio)",
                    f"{warm:.2f} ({fmt_ms(first)} vs {fmt_ms(steady.median)}, n={steady.n})",
                    "<= 1.20", warm <= 1.2, note=f"bare engine alongside: {bare_warm:.2f} ({fmt_ms(bare_ms[0])} "
                    f"first); agent overhead first / later: {fmt_ms(e2e_ms[0] - engine_ms[0])} / "
                    f"{fmt_ms(overhead_direct.median)}")
            raw[engine] = {"bare_ms": bare_ms, "e2e_ms": e2e_ms, "engine_ms": engine_ms, "inner_total_ms": inner,
                           "audio_s": audio_s, "bare_load_ms": bare.ready.get("load_ms"),
                           "agent_load_ms": state["engines"]["transcriber"].get("load_ms")}
        finally:
            watcher.close()
            agent.stop()
            bare.close()
    res.raw["pipeline"] = raw
    return raw


if __name__ == "__main__":
    pass
