"""Before/after: a baseline copy of the agent code versus the working tree, side by side.

    cp -r agent handlers .cache/bench/baseline/      # before changing anything
    python -m bench.ab --baseline .cache/bench/baseline [--rounds 3] [--after FOLDER]

Both variants run against the same broker at the same time and are alternated, so each ratio
(after / before, or before / after for times) compares like with like on a noisy machine:
- agent overhead: close of a file in the inbox -> its `event/transcript`, model-free engine;
- inbox throughput: 300 files waiting in a paused inbox, then `resume`;
- `voice-agent run` -> `online`, RSS idle right after online and 2 s later;
- `python -X importtime -c "import agent.app"`;
- outbox events/s persisted + published (agent.mqtt.outbox + agent.mqtt.publisher in a child process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (REPO, Broker, Dist, Results, agent_config, machine, ratios, rss_mb, start_agent,  # noqa: E402
                          table, unique_copy, wait_engines_ready, write_closed)
from tests.support.wavs import tone_wav  # noqa: E402

SECTION = "A/B"


def overhead(res: Results, work: Path, port: int, code: dict[str, Path | None], n: int) -> None:
    data = tone_wav(0.5)
    agents = {}
    out: dict[str, list[float]] = {k: [] for k in code}
    try:
        for k, c in code.items():
            agents[k] = start_agent(work / f"ab-oh-{k}", port, agent_config(transcriber={"engine": "bench_metadata"}),
                                    code=c)
            wait_engines_ready(agents[k][1], agents[k][0].root, 30)
        time.sleep(1)
        names = list(code)
        for i in range(n):
            for k in (names if i % 2 == 0 else names[::-1]):
                agent, w, _ = agents[k]
                topic = f"{agent.root}/event/transcript"
                base = w.count(topic)
                t0 = write_closed(agent.inbox / f"o{i:03d}.wav", unique_copy(data, i))
                if not w.wait_count(topic, base + 1, 30):
                    raise RuntimeError(f"{k}: no transcript")
                t1 = max(t for t, tp, _ in w.kept if tp == topic)
                out[k].append((t1 - t0) * 1000)
                time.sleep(0.05)
    finally:
        for agent, w, _ in agents.values():
            w.close()
            agent.stop()
    for k in code:
        res.add(SECTION, f"close -> transcript, bench_metadata ({k})", Dist(out[k]).spread("{:.1f}") + " ms")
    res.add(SECTION, "close -> transcript: before / after (speed-up)", ratios(out["before"], out["after"]).spread("{:.2f}"))
    res.raw["overhead_ms"] = out


def throughput(res: Results, work: Path, port: int, code: dict[str, Path | None], rounds: int, m: int = 300) -> None:
    data = tone_wav(0.5)
    agents = {}
    out: dict[str, list[float]] = {k: [] for k in code}
    live: dict[str, list[float]] = {k: [] for k in code}
    try:
        for k, c in code.items():
            agents[k] = start_agent(work / f"ab-tp-{k}", port, agent_config(transcriber={"engine": "bench_metadata"}),
                                    code=c)
            wait_engines_ready(agents[k][1], agents[k][0].root, 30)
        names = list(code)
        for r in range(rounds):
            for k in (names if r % 2 == 0 else names[::-1]):   # written while the agent runs
                agent, w, _ = agents[k]
                topic = f"{agent.root}/event/transcript"
                base = w.count(topic)
                t0 = time.monotonic()
                for i in range(m):
                    write_closed(agent.inbox / f"l{r}-{i:04d}.wav", unique_copy(data, 50000 + r * 10000 + i))
                if not w.wait_count(topic, base + m, 120):
                    raise RuntimeError(f"{k}: {w.count(topic) - base} of {m}")
                t1 = max(t for t, tp, _ in w.kept if tp == topic)
                live[k].append(m / (t1 - t0))
                time.sleep(1)
            for k in (names if r % 2 == 0 else names[::-1]):
                agent, w, _ = agents[k]
                topic = f"{agent.root}/event/transcript"
                w.publish(f"{agent.root}/request/pause", b"{}")
                time.sleep(0.3)
                base = w.count(topic)
                for i in range(m):
                    write_closed(agent.inbox / f"r{r}-{i:04d}.wav", unique_copy(data, r * 10000 + i))
                time.sleep(1.5)
                t0 = time.monotonic()
                w.publish(f"{agent.root}/request/resume", b"{}")
                if not w.wait_count(topic, base + m, 120):
                    raise RuntimeError(f"{k}: {w.count(topic) - base} of {m}")
                t1 = max(t for t, tp, _ in w.kept if tp == topic)
                out[k].append(m / (t1 - t0))
    finally:
        for agent, w, _ in agents.values():
            w.close()
            agent.stop()
    for k in code:
        res.add(SECTION, f"inbox files/s, {m} queued then resume ({k})", Dist(out[k]).spread("{:.0f}"))
    res.add(SECTION, "inbox files/s queued: after / before", ratios(out["after"], out["before"]).spread("{:.2f}"))
    for k in code:
        res.add(SECTION, f"inbox files/s, {m} written while running ({k})", Dist(live[k]).spread("{:.0f}"))
    res.add(SECTION, "inbox files/s written while running: after / before",
            ratios(live["after"], live["before"]).spread("{:.2f}"))
    res.raw["files_per_s"] = out
    res.raw["files_per_s_live"] = live


def startup(res: Results, work: Path, port: int, code: dict[str, Path | None], rounds: int) -> None:
    online: dict[str, list[float]] = {k: [] for k in code}
    rss0: dict[str, list[float]] = {k: [] for k in code}
    rss2: dict[str, list[float]] = {k: [] for k in code}
    names = list(code)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            agent, w, t = start_agent(work / f"ab-st-{k}-{r}", port, agent_config(
                transcriber={"engine": "whisper_cpp", "whisper_cpp": {"binary": "/nonexistent/whisper-cpp"}}),
                code=code[k])
            try:
                rss0[k].append(rss_mb(agent.proc.pid))
                time.sleep(2)
                rss2[k].append(rss_mb(agent.proc.pid))
                online[k].append(t * 1000)
            finally:
                w.close()
                agent.stop()
    for k in code:
        res.add(SECTION, f"run -> online ({k})", Dist(online[k]).spread("{:.0f}") + " ms")
        res.add(SECTION, f"RSS at online / 2 s later, engine unavailable ({k})",
                f"{Dist(rss0[k]).median:.1f} / {Dist(rss2[k]).median:.1f} MB")
    res.add(SECTION, "run -> online: before / after (speed-up)", ratios(online["before"], online["after"]).spread("{:.2f}"))
    res.add(SECTION, "idle RSS: after - before", f"{Dist(rss2['after']).median - Dist(rss2['before']).median:+.1f} MB")
    res.raw["startup"] = {"online_ms": online, "rss_online": rss0, "rss_2s": rss2}


def imports(res: Results, code: dict[str, Path | None], rounds: int) -> None:
    from bench.footprint import import_time_ms
    out: dict[str, list[float]] = {k: [] for k in code}
    names = list(code)
    for k in names:   # byte-compile both first
        _import_ms(code[k])
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            out[k].append(_import_ms(code[k]))
    del import_time_ms
    for k in code:
        res.add(SECTION, f"import agent.app ({k})", Dist(out[k]).spread("{:.0f}") + " ms")
    res.add(SECTION, "import agent.app: before / after (speed-up)", ratios(out["before"], out["after"]).spread("{:.2f}"))
    res.raw["import_ms"] = out


def _import_ms(code: Path | None) -> float:
    env = {**os.environ, **({"PYTHONPATH": str(code)} if code else {})}
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import agent.app"], cwd="/", env=env,
                         capture_output=True, text=True, check=True).stderr
    total = 0.0
    for line in err.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and "cumulative" not in line and \
                parts[2].startswith(" ") and not parts[2].startswith("  "):
            total += float(parts[1])
    return total / 1000


OUTBOX_SNIPPET = """
import json, sys, tempfile
from pathlib import Path
sys.path.append({repo!r})
from bench.outbox_throughput import Rig, throughput
rig = Rig(Path(tempfile.mkdtemp()), {port}, "ab")
throughput(rig, 200)
print(json.dumps(throughput(rig, {n})))
rig.close()
"""


def outbox(res: Results, port: int, code: dict[str, Path | None], rounds: int, n: int = 3000) -> None:
    put: dict[str, list[float]] = {k: [] for k in code}
    pub: dict[str, list[float]] = {k: [] for k in code}
    names = list(code)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            env = {**os.environ, **({"PYTHONPATH": str(code[k])} if code[k] else {"PYTHONPATH": str(REPO)})}
            outp = subprocess.run([sys.executable, "-c", OUTBOX_SNIPPET.format(repo=str(REPO), port=port, n=n)],
                                  cwd="/", env=env, capture_output=True, text=True, timeout=120)
            if outp.returncode != 0:
                raise RuntimeError(outp.stderr[-500:])
            a, b = json.loads(outp.stdout.strip().splitlines()[-1])
            put[k].append(a)
            pub[k].append(b)
    for k in code:
        res.add(SECTION, f"outbox events/s persisted / published ({k})",
                f"{Dist(put[k]).median:.0f} / {Dist(pub[k]).median:.0f}")
    res.add(SECTION, "outbox persisted/s: after / before", ratios(put["after"], put["before"]).spread("{:.2f}"))
    res.add(SECTION, "outbox published/s: after / before", ratios(pub["after"], pub["before"]).spread("{:.2f}"))
    res.raw["outbox"] = {"put": put, "pub": pub}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="folder holding the 'before' agent/ and handlers/")
    ap.add_argument("--after", type=Path, default=None,
                    help="folder holding the 'after' agent/ and handlers/ (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="overhead,throughput,startup,imports,outbox")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    code = {"before": args.baseline.resolve(), "after": args.after.resolve() if args.after else None}
    info = machine()
    print(f"machine: {info}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="voice-agent-ab-"))
    broker = Broker(work / "broker").start()
    res = Results()
    only = args.only.split(",")
    try:
        if "imports" in only:
            imports(res, code, 5 * args.rounds)
        if "overhead" in only:
            overhead(res, work, broker.port, code, 10 * args.rounds)
        if "throughput" in only:
            throughput(res, work, broker.port, code, args.rounds)
        if "startup" in only:
            startup(res, work, broker.port, code, 2 * args.rounds)
        if "outbox" in only:
            outbox(res, broker.port, code, args.rounds)
    finally:
        broker.stop()
    print("\n" + table(res.rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": [r.__dict__ for r in res.rows], "raw": res.raw},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
