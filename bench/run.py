"""Benchmarks of issue #7, against a real Mosquitto that this run starts on a free loopback port.

    python -m bench            # full run (about 10-15 min on 2 shared cores)
    python -m bench --quick    # every benchmark, fewer rounds (under about 2 min)
    python -m bench envelope   # the Pi envelope: agent + engines in a 448 MB, 0.4-core cgroup (bench/envelope.py)
    python -m bench wake       # wake word and noise suppression: accuracy, false accepts, latency, cost (bench/wake.py)
    python bench/run.py --only roundtrip,outbox --json out.json --doc docs/performance.md

Every comparison is measured side by side in the same run, alternating, and reported as a
ratio with its spread: the machine is shared and noisy, so absolute numbers of two separate
runs are never compared. Each result is stated against its budget (PASS / MISS), or INFO where
there is no budget, SKIP where a prerequisite is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Broker, Results, machine, table, write_marked_block  # noqa: E402

ORDER = ("roundtrip", "footprint", "inbox", "outbox", "pipeline", "listen", "server", "overlap", "speech")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kept-whisper-cpp"]:   # issue #27: pywhispercpp against the CLI, equal words required
        from bench import kept_whisper_cpp
        return kept_whisper_cpp.main(argv[1:])
    if argv[:1] == ["envelope"]:   # the Pi envelope (issue #17): its own runner and options
        from bench import envelope
        return envelope.main(argv[1:])
    if argv[:1] == ["wake"]:   # wake word and noise suppression (issue #24): bench/wake.py
        from bench import wake
        return wake.main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds: a run under about two minutes")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(ORDER)}")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--json", type=Path, help="also write every row and raw sample here")
    ap.add_argument("--doc", type=Path, help="rewrite the results table in this markdown file "
                                             "(between the bench markers)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs of agents and broker)")
    args = ap.parse_args(argv)
    wanted = [b for b in (args.only.split(",") if args.only else ORDER) if b]
    skip = set(filter(None, args.skip.split(",")))
    unknown = [b for b in [*wanted, *skip] if b not in ORDER]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    wanted = [b for b in ORDER if b in wanted and b not in skip]

    logging.basicConfig(level=logging.ERROR)   # the in-process rigs' reconnect chatter is expected
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, {info['ram']} RAM, Python {info['python']}, "
          f"load average {info['load_avg']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="voice-agent-bench-"))
    res = Results()
    broker = Broker(work / "broker").start()
    print(f"broker: mosquitto on 127.0.0.1:{broker.port} (set_tcp_nodelay true); work folder {work}", flush=True)
    started = time.monotonic()
    timings: dict[str, float] = {}
    try:
        for name in wanted:
            t0 = time.monotonic()
            print(f"\n== {name} ==", flush=True)
            try:
                _run_one(name, res, work, broker, args.quick)
            except Exception as exc:  # one broken benchmark must not hide the others' results
                traceback.print_exc()
                res.add(name, "benchmark failed", f"{type(exc).__name__}: {str(exc)[:200]}", status="ERROR")
            timings[name] = round(time.monotonic() - t0, 1)
            print(f"   ({name} took {timings[name]:.0f} s)", flush=True)
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    print("\n" + table(res.rows))
    print(f"\n{len(res.rows)} rows in {total:.0f} s ({'quick' if args.quick else 'full'} run); "
          f"load average at the end {machine()['load_avg']}")
    misses = [r for r in res.rows if r.status in ("MISS", "ERROR")]
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "seconds": round(total, 1),
                                         "per_benchmark_s": timings,
                                         "rows": [r.__dict__ for r in res.rows], "raw": res.raw}, indent=1,
                                        default=str))
    if args.doc:
        write_doc(args.doc, res, info, args.quick, total, timings)
    print(f"{sum(r.status == 'PASS' for r in res.rows)} PASS, {len(misses)} MISS/ERROR")
    return 0


def _run_one(name: str, res: Results, work: Path, broker: Broker, quick: bool) -> None:
    if name == "roundtrip":
        from bench import request_roundtrip
        request_roundtrip.run(res, work, broker.port, quick)
    elif name == "footprint":
        from bench import footprint
        footprint.run(res, work, broker.port, quick)
    elif name == "inbox":
        from bench import inbox_throughput
        inbox_throughput.run(res, work, broker.port, quick)
    elif name == "outbox":
        from bench import outbox_throughput
        outbox_throughput.run(res, work, broker, quick)
    elif name == "pipeline":
        from bench import pipeline_overhead
        pipeline_overhead.run(res, work, broker.port, quick, ("bench_metadata", "faster_whisper", "whisper_cpp"))
    elif name == "listen":
        from bench import listening
        listening.run(res, work, broker.port, quick)
    elif name == "server":
        from bench import kept_server
        kept_server.run(res, work, quick)
    elif name == "overlap":
        from bench import overlap
        overlap.run(res, work, broker.port, quick)
    elif name == "speech":   # word error rate on real speech beside the bare engines (bench/speech_accuracy.py)
        from bench import speech_accuracy
        speech_accuracy.run(res, work, broker.port, quick)


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_doc(path: Path, res: Results, info: dict, quick: bool, total: float, timings: dict) -> None:
    block = "\n".join([
        BEGIN,
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{'`python -m bench --quick`' if quick else '`python -m bench`'}, {total:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).",
        f"Machine: {info['nproc']} cores (`nproc`), {info['cpu']}, {info['ram']} RAM, Python {info['python']}, "
        f"load average {info['load_avg']} at the start (the cores are shared with other work).",
        "",
        table(res.rows, markdown=True),
        END,
    ])
    write_marked_block(path, block, BEGIN, END)
    print(f"wrote the table to {path}")


if __name__ == "__main__":
    sys.exit(main())
