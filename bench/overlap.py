"""8. Pipeline overlap and batch transcription (the lead's throughput features).

Overlap: N speech files wait in a paused inbox, then one `resume`; time until the last
`event/summary` (whisper_cpp transcriber + llama_server summarizer, both real). Variants, run
as separate agents that are alternated (each round every variant in rotated order):
- overlap on: jobs.max_concurrent 2, transcriber.concurrency 1, summarizer.concurrency 1
  (job N is summarized while job N+1 is transcribed), whisper.cpp -t 1, llama.cpp 1 thread,
  so threads x concurrent stages never exceed the 2 cores;
- overlap off, same engines: jobs.max_concurrent 1 (the stages run one after another);
- overlap off, best sequential: jobs.max_concurrent 1 with 2 threads for each engine.
Batching is off for all three, so only the overlap differs.

Batch: M files wait in a paused inbox; whisper_cpp with the default `batch: concat` (the waiting
files joined into packs, all packs in one run, split by timestamps) versus `batch: false` (one
process per file), and in a full run `batch: files` (one run, one -f per file) as INFO; summarizer
none; every arm with the same `audio_ctx` so the ratio is batching alone; time from `resume` to
the last transcript.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import (Dist, Results, agent_config, engine_settings, ratios, speech_files, start_agent,
                          unique_copy, wait_engines_ready, write_closed)

SECTION = "8 throughput features"


def _features() -> dict[str, bool]:
    from agent.settings import JobsSettings, TranscriberSettings, WhisperCppSettings
    fields = lambda cls: set(cls.__dataclass_fields__)  # noqa: E731
    return {"jobs.overlap": "overlap" in fields(JobsSettings),
            "stage concurrency": "concurrency" in fields(TranscriberSettings),
            "whisper_cpp.batch": "batch" in fields(WhisperCppSettings)}


class Paused:
    """An agent whose inbox is filled while paused and drained on `resume`, timed."""

    def __init__(self, name: str, work: Path, port: int, config: dict, done_topic: str) -> None:
        self.name = name
        self.agent, self.watcher, _ = start_agent(work / name, port, config)
        self.topic = f"{self.agent.root}/event/{done_topic}"
        state = wait_engines_ready(self.watcher, self.agent.root, timeout=300)
        if not state or not all(state["engines"][k].get("ready") for k in ("transcriber", "summarizer")):
            self.close()
            raise RuntimeError(f"{name}: engines not ready: {(state or {}).get('engines')}")
        self._pause()
        self.n = 0

    def _pause(self) -> None:
        self.watcher.publish(f"{self.agent.root}/request/pause", b"{}")
        time.sleep(0.3)

    def batch(self, files: list[bytes], count: int) -> float:
        base = self.watcher.count(self.topic)
        for i in range(count):
            self.n += 1
            write_closed(self.agent.inbox / f"{self.name}-{self.n:03d}.wav",
                         unique_copy(files[i % len(files)], 1000 + self.n))
        time.sleep(0.5)  # every file announced as ready
        t0 = time.monotonic()
        self.watcher.publish(f"{self.agent.root}/request/resume", b"{}")
        if not self.watcher.wait_count(self.topic, base + count, 120 + 30 * count):
            raise RuntimeError(f"{self.name}: {self.watcher.count(self.topic) - base} of {count} done")
        last = max(t for t, topic, _ in self.watcher.kept if topic == self.topic)
        self._pause()
        return last - t0

    def close(self) -> None:
        self.watcher.close()
        self.agent.stop()


def overlap(res: Results, work: Path, port: int, quick: bool, feats: dict[str, bool]) -> None:
    from tests.support.broker import free_port
    from tests.support.llama import gemma_model_path, llama_server_command

    model = str(gemma_model_path())

    def summarizer(threads: int) -> dict:
        cmd = llama_server_command()
        # Prompt processing too: llama-cpp-python's server runs it on every core by default
        # (--n_threads_batch), which overlapped with whisper.cpp oversubscribes the cores.
        cmd[cmd.index("--n_threads") + 1] = str(threads)
        cmd += ["--n_threads_batch", str(threads)]
        # 64 tokens: room for the one or two sentences the default prompt asks for. With 16 the
        # summary took 0.5 s against 4.7 s of transcription, and overlap could not show.
        return {"engine": "llama_server", "max_tokens": 64, "min_words": 3,
                "llama_server": {"command": cmd, "model": model, "port": free_port()}}

    def transcriber(threads: int) -> dict:
        t = engine_settings("whisper_cpp")
        t["whisper_cpp"].update({"threads": threads, "batch": False})
        return t

    def jobs(on: bool) -> dict:
        # cache_size 0: the sentences repeat, and a cached summary would skip the summarize stage
        j: dict = {"max_concurrent": 2 if on else 1, "cache_size": 0}
        if feats["jobs.overlap"]:
            j["overlap"] = on
        return j

    variants = {
        "on-t1": agent_config(transcriber=transcriber(1), summarizer=summarizer(1), jobs=jobs(True)),
        "off-t1": agent_config(transcriber=transcriber(1), summarizer=summarizer(1), jobs=jobs(False)),
    }
    if not quick:
        variants["off-t2"] = agent_config(transcriber=transcriber(2), summarizer=summarizer(2), jobs=jobs(False))
    n = 2 if quick else 20     # full: 2 rounds of 20 files per variant
    rounds = 1 if quick else 2
    files = [p.read_bytes() for p in speech_files()]
    agents: dict[str, Paused] = {}
    out: dict[str, list[float]] = {k: [] for k in variants}
    stages: dict[str, list[float]] = {"transcribe": [], "summarize": []}
    try:
        for k, cfg in variants.items():
            agents[k] = Paused(f"b8-{k}", work, port, cfg, "summary")
        names = list(variants)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                out[k].append(n / agents[k].batch(files, n))
        off = agents["off-t1"]
        for _, body in off.watcher.find(f"{off.agent.root}/event/summary"):
            for st in stages:
                stages[st].append(body["timings_ms"].get(st, 0.0))
    finally:
        for a in agents.values():
            a.close()
    ratio = ratios(out["on-t1"], out["off-t1"])
    res.add(SECTION, f"overlap on / off, {n} files x {rounds} rounds, whisper -t 1 + llama 1 thread, 64 tokens (files/s ratio)",
            ratio.spread("{:.2f}"), ">= 1.5x", ratio.median >= 1.5,
            note=f"on {Dist(out['on-t1']).median:.3f} vs off {Dist(out['off-t1']).median:.3f} files/s")
    if stages["transcribe"]:
        t, sm = Dist(stages["transcribe"]).median, Dist(stages["summarize"]).median
        bound = (t + sm) / max(t, sm, 1e-9)
        res.add(SECTION, "overlap: stage times without overlap (transcribe / summarize)",
                f"{t / 1000:.2f} s / {sm / 1000:.2f} s", note=f"the best overlap can give is "
                f"(T + S) / max(T, S) = {bound:.2f}x")
    if "off-t2" in out:
        r2 = ratios(out["on-t1"], out["off-t2"])
        res.add(SECTION, "overlap on (1+1 threads) / sequential with 2+2 threads (files/s ratio)",
                r2.spread("{:.2f}"), note=f"sequential 2+2 threads: {Dist(out['off-t2']).median:.3f} files/s")
    res.raw["overlap_files_per_s"] = out


def batch(res: Results, work: Path, port: int, quick: bool) -> None:
    audio_ctx = None   # the default (auto: each single run's window sized from its clip), in every arm

    def cfg(mode: str | bool, beams: int = 1) -> dict:
        t = engine_settings("whisper_cpp")
        t["whisper_cpp"].update({"threads": 2, "batch": mode, "batch_max": 10, "audio_ctx": audio_ctx,
                                 "beam_size": beams})
        return agent_config(transcriber=t, summarizer={"engine": "none"})
    m = 3 if quick else 10
    rounds = 1 if quick else 2   # a round of 10 files takes 10-30 s per arm here
    arms: dict[str, dict] = {"concat": cfg("concat"), "single": cfg(False)}
    if not quick:   # for comparison: one -f per file, and both arms with whisper.cpp's own 5 beams
        arms.update({"files": cfg("files"), "concat-bs5": cfg("concat", 5), "single-bs5": cfg(False, 5)})
    files = [p.read_bytes() for p in speech_files()]
    agents: dict[str, Paused] = {}
    out: dict[str, list[float]] = {k: [] for k in arms}
    try:
        for k, config in arms.items():
            agents[k] = Paused(f"b8-{k}", work, port, config, "transcript")
        names = list(arms)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                out[k].append(agents[k].batch(files, m))
    finally:
        for a in agents.values():
            a.close()
    ratio = ratios(out["single"], out["concat"])
    res.add(SECTION, f"whisper_cpp batch (concat, the default) of {m} waiting files / one process each (speed-up)",
            ratio.spread("{:.2f}"), ">= 1.3x", ratio.median >= 1.3,
            note=f"batched {Dist(out['concat']).median:.1f} s vs one each {Dist(out['single']).median:.1f} s, "
                 f"audio_ctx {'auto' if audio_ctx is None else audio_ctx} in all arms")
    if "files" in out:
        r2 = ratios(out["single"], out["files"])
        res.add(SECTION, f"whisper_cpp batch: files (one -f each) of {m} waiting files / one process each",
                r2.spread("{:.2f}"), note=f"files {Dist(out['files']).median:.1f} s")
        r5 = ratios(out["single-bs5"], out["concat-bs5"])
        res.add(SECTION, "whisper_cpp batch: concat / one process each, both with beam_size 5",
                r5.spread("{:.2f}"), note=f"joined {Dist(out['concat-bs5']).median:.1f} s vs one each "
                f"{Dist(out['single-bs5']).median:.1f} s; one each, time with 5 beams / with 1 (the default): "
                f"{ratios(out['single-bs5'], out['single']).spread('{:.2f}')}")
    res.raw["batch_s"] = out


def run(res: Results, work: Path, port: int, quick: bool) -> None:
    feats = _features()
    res.add(SECTION, "features present", ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in feats.items()))
    if feats["whisper_cpp.batch"] and quick:
        res.add(SECTION, "whisper_cpp batch", "full run only (2 x 10 whisper.cpp files)", status="SKIP")
    elif feats["whisper_cpp.batch"]:
        batch(res, work, port, quick)
    else:
        res.add(SECTION, "whisper_cpp batch", "not in agent/settings.py yet", status="SKIP")
    if feats["jobs.overlap"] or feats["stage concurrency"]:
        if quick:
            res.add(SECTION, "pipeline overlap", "full run only (two llama.cpp servers, 20 files)", status="SKIP")
        else:
            overlap(res, work, port, quick, feats)
    else:
        res.add(SECTION, "pipeline overlap", "not in agent/settings.py yet", status="SKIP")
