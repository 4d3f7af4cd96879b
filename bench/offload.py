"""Fleet offload (issue #25): time from the end of speech to the transcript, a Pi-sized device
alone against the same device handing its jobs to a worker.

    python -m bench.offload                 # device at 0.1 of a core (the Pi calibration for neural work)
    python -m bench.offload --cpu 0.4 --files 6

The device is `voice-agent run` in a 448 MB cgroup with a CPU quota (tests/support/cgroup.py):
alone it transcribes with PocketSphinx (the Pi profile's engine); with a worker it runs
`transcriber.engine: fleet` (PocketSphinx as the fallback) beside an unconstrained worker agent
with faster-whisper (Whisper base). Each real recording (tests/support/real_speech.py) is
written into the device's inbox, one at a time; "end of speech" is the moment the finished
recording is closed there, the transcript is the device's `event/transcript` arriving at a
subscriber. Both variants take the same files in alternation, and the word error rate of each is
printed beside its latency: a speedup counts only with its accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Watcher, agent_config, engine_settings, machine, unique_copy, write_closed  # noqa: E402
from tests.support import real_speech  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.cgroup import Box, CgroupUnavailable  # noqa: E402

MB = 1024 * 1024


def wait_ready(watcher: Watcher, agent: AgentProcess, timeout: float = 300) -> None:
    def ready() -> bool:
        states = watcher.find(f"{agent.root}/state")
        return bool(states) and bool(states[-1][1].get("engines", {}).get("transcriber", {}).get("ready"))
    if not watcher.wait(ready, timeout):
        raise TimeoutError(f"{agent.device_id}: transcriber not ready within {timeout} s:\n{agent.log()[-2000:]}")


def device(work: Path, name: str, port: int, box: Box, transcriber: dict, watcher: Watcher) -> AgentProcess:
    agent = AgentProcess(work / name, port, agent_config(transcriber=transcriber, summarizer={"engine": "none"},
                                                        inbox={"settle_ms": 300}), device_id=name)
    agent.start(None, wait_online=False)
    box.add(agent.proc.pid)
    wait_ready(watcher, agent)
    return agent


def one(watcher: Watcher, agent: AgentProcess, data: bytes, i: int) -> tuple[float, str, str]:
    """(seconds from the recording closed in the inbox to its transcript, text, engine)."""
    before = len(watcher.find(f"{agent.root}/event/transcript"))
    agent.inbox.mkdir(parents=True, exist_ok=True)
    closed = write_closed(agent.inbox / f"rec-{i}.wav", unique_copy(data, i))
    if not watcher.wait(lambda: len(watcher.find(f"{agent.root}/event/transcript")) > before, 600):
        raise TimeoutError(f"{agent.device_id}: no transcript for rec-{i}")
    at, body = watcher.find(f"{agent.root}/event/transcript")[before]
    return at - closed, body["text"], body["engine"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.offload", description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", type=float, default=0.1, help="the device's CPU quota in cores (default 0.1)")
    ap.add_argument("--files", type=int, default=6, help="real recordings per variant (default 6)")
    args = ap.parse_args(argv)
    recordings = [r for r in real_speech.recordings(("sentence", "command"))][: args.files]
    if len(recordings) < 2:
        print(f"SKIP: real recordings missing: {real_speech.unavailable()}")
        return 0
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load average {info['load_avg']}; "
          f"device: 448 MB, {args.cpu} core(s); {len(recordings)} real recordings", flush=True)
    work = Path(tempfile.mkdtemp(prefix="voice-agent-offload-"))
    broker = Broker(work / "broker").start()
    watcher = Watcher(broker.port, subscribe=("voice/+/state", "voice/+/event/transcript"))
    boxes: list[Box] = []
    agents: list[AgentProcess] = []
    try:
        try:
            boxes = [Box.create(448 * MB, cpu_quota=args.cpu, name=f"va-off{i}") for i in range(2)]
        except CgroupUnavailable as exc:
            print(f"SKIP: cgroups cannot be written here: {exc}")
            return 0
        worker = AgentProcess(work / "worker", broker.port, agent_config(
            transcriber=engine_settings("faster_whisper"), summarizer={"engine": "none"}, inbox={"enabled": False},
            fleet={"worker": True}), device_id="worker")
        worker.start(None, wait_online=False)
        agents.append(worker)
        wait_ready(watcher, worker)
        alone = device(work, "alone", broker.port, boxes[0], {"engine": "pocketsphinx"}, watcher)
        agents.append(alone)
        offload = device(work, "offload", broker.port, boxes[1],
                         {"engine": "fleet", "fleet": {"timeout_s": 120, "fallback": "pocketsphinx"}}, watcher)
        agents.append(offload)
        results: dict[str, list[tuple[float, str, str]]] = {"alone": [], "offload": []}
        for i, rec in enumerate(recordings):   # alternating, so load changes hit both alike
            data = rec.path.read_bytes()
            for name, agent in (("alone", alone), ("offload", offload)) if i % 2 == 0 else \
                    (("offload", offload), ("alone", alone)):
                results[name].append(one(watcher, agent, data, i))
        print(f"\n{'variant':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'WER':>6}  engine")
        for name, rows in results.items():
            latencies = [r[0] for r in rows]
            error = real_speech.wer([(rec.text, r[1]) for rec, r in zip(recordings, rows)])
            engines = sorted({r[2] for r in rows})
            print(f"{name:<10} {statistics.median(latencies):>9.2f} {min(latencies):>7.2f} {max(latencies):>7.2f} "
                  f"{error:>6.3f}  {', '.join(engines)}")
        ratio = [a[0] / o[0] for a, o in zip(results["alone"], results["offload"])]
        print(f"\nalone / offload, per file: median {statistics.median(ratio):.2f} "
              f"(range {min(ratio):.2f}-{max(ratio):.2f})")
    finally:
        for agent in agents:
            agent.stop()
        for box in boxes:
            box.close()
        watcher.close()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
