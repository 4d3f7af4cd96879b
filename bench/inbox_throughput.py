"""2. Inbox throughput with the model-free `bench_metadata` engine, and the agent's memory.

Short files (0.5 s WAVs, each unique so no cache answers) are written straight into the inbox
by a close-after-write producer as fast as it can. Throughput is files / (last transcript
received - first file written); the agent's RSS is read at start, after the first 100 files and
at the end. A second figure drops the files while the agent is paused and then resumes it, so
the agent alone is timed (no producer competing for the 2 cores).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Dist, Results, agent_config, rss_mb, start_agent, unique_copy, wait_engines_ready, write_closed
from tests.support.wavs import tone_wav

SECTION = "2 inbox"


def run(res: Results, work: Path, port: int, quick: bool) -> dict:
    n = 200 if quick else 1000
    data = tone_wav(0.5)
    agent, watcher, _ = start_agent(work / "b2", port, agent_config(transcriber={"engine": "bench_metadata"}))
    topic = f"{agent.root}/event/transcript"
    raw: dict = {}
    try:
        wait_engines_ready(watcher, agent.root, timeout=60)
        time.sleep(1.0)
        pid = agent.proc.pid
        rss = {"start": rss_mb(pid)}
        mark: dict[str, float] = {}

        def on_transcript(now: float, t: str, payload: bytes) -> None:
            c = watcher.counts.get(topic, 0) + 1   # counted after the hooks run
            if c == 100:
                mark["rss100"] = rss_mb(pid)
            mark["last"] = now
        watcher.hooks.append((topic, on_transcript))
        t0 = time.monotonic()
        for i in range(n):
            write_closed(agent.inbox / f"c{i:04d}.wav", unique_copy(data, i))
        t_written = time.monotonic()
        if not watcher.wait_count(topic, n, 60 + n / 5):
            raise RuntimeError(f"only {watcher.count(topic)} of {n} files done")
        elapsed = mark["last"] - t0
        time.sleep(1.5)
        rss["after100"] = mark.get("rss100", float("nan"))
        rss["end"] = rss_mb(pid)
        rate = n / elapsed
        res.add(SECTION, f"{n} files written while running: files/s", f"{rate:.1f} files/s "
                f"({elapsed:.2f} s; producer done after {t_written - t0:.2f} s)", ">= 100 files/s", rate >= 100)

        # the agent alone: files wait while paused, then one resume
        m = 200 if quick else 300
        rates2 = []
        for r in range(1 if quick else 3):
            watcher.publish(f"{agent.root}/request/pause", b"{}")
            time.sleep(0.5)
            base = watcher.count(topic)
            for i in range(m):
                write_closed(agent.inbox / f"p{r}-{i:04d}.wav", unique_copy(data, 5000 + 1000 * r + i))
            time.sleep(1.5)   # every file settled (closed + grace) and listed as ready
            t1 = time.monotonic()
            watcher.publish(f"{agent.root}/request/resume", b"{}")
            if not watcher.wait_count(topic, base + m, 60 + m / 5):
                raise RuntimeError(f"only {watcher.count(topic) - base} of {m} paused files done")
            rates2.append(m / (mark["last"] - t1))
        d2 = Dist(rates2)
        rate2 = d2.median
        res.add(SECTION, f"{m} files queued while paused, then resume: files/s", d2.spread("{:.1f}") + " files/s",
                ">= 100 files/s", rate2 >= 100)
        m = m * len(rates2)
        time.sleep(1.0)
        rss["end2"] = rss_mb(pid)
        growth = rss["end"] - rss["start"]
        res.add(SECTION, f"agent RSS start / after 100 / after {n}",
                f"{rss['start']:.1f} / {rss['after100']:.1f} / {rss['end']:.1f} MB (+{growth:.1f})",
                "growth <= 5 MB", growth <= 5, note=f"after {n + m}: {rss['end2']:.1f} MB")
        raw = {"n": n, "elapsed_s": elapsed, "files_per_s": rate, "paused_files_per_s": rate2, "rss_mb": rss}
    finally:
        watcher.close()
        agent.stop()
    res.raw["inbox"] = raw
    return raw
