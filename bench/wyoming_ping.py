"""Wyoming ping latency while a speech-to-text job runs, per real engine.

Home Assistant drops a satellite whose pong is 5 s late; the Wyoming server answers pings from
its own loop, which never waits on a job, but it shares the agent's Python interpreter: an
engine that holds the GIL through its whole decode stalls that loop for as long. For each engine
the agent (a subprocess, Wyoming on loopback) gets 14 s of speech over the speech-to-text role,
and the client pings every 50 ms until the transcript comes back. Prints one line per engine:
pings answered, median and largest latency, the job's length.

    PYTHONPATH=$PWD nice .venv/bin/python bench/wyoming_ping.py [--engines pocketsphinx,faster_whisper,whisper_cpp]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.audio.wav import write_wav  # noqa: E402
from bench.common import engine_settings  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
from tests.support.probe import Probe  # noqa: E402
from tests.support.speech import LONG_SENTENCES, build_speech  # noqa: E402
from tests.support.wyoming_client import WyomingClient, pcm_of, send_audio  # noqa: E402


def measure(engine: str, work: Path, broker: Broker, probe: Probe, pcm: bytes) -> str:
    from wyoming.ping import Ping

    port = free_port()
    transcriber = {"engine": "pocketsphinx"} if engine == "pocketsphinx" else engine_settings(engine)
    agent = AgentProcess(work / engine, broker.port, {"transcriber": transcriber, "summarizer": {"engine": "none"},
                                                      "log_level": "INFO", "wyoming": {"enabled": True,
                                                                                       "stt_port": port}})
    agent.start(probe)
    try:
        probe.wait_for(f"{agent.root}/state", lambda m: m.json.get("engines", {}).get("transcriber", {})
                       .get("ready") is True, timeout=120, what=f"{engine} loaded")
        deadline = time.monotonic() + 30
        while "wyoming: serving" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        client = WyomingClient(port, timeout=120)
        send_audio(client, pcm)
        latencies, t0, answer = [], time.monotonic(), None
        while answer is None:
            t_ping = time.monotonic()
            client.send(Ping())
            while True:
                event = client.read()
                if event is None:
                    return f"{engine}: connection closed"
                if event.type == "pong":
                    latencies.append(time.monotonic() - t_ping)
                    break
                if event.type in ("transcript", "error"):
                    answer = event.type
            time.sleep(0.05)
        job_s = time.monotonic() - t0
        client.close()
        latencies.sort()
        return (f"{engine:15s} {answer}: {len(latencies)} pings, median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
                f"max {latencies[-1] * 1000:.1f} ms, job {job_s:.1f} s")
    finally:
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="pocketsphinx,faster_whisper,whisper_cpp")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_wav(work / "speech.wav", build_speech(LONG_SENTENCES[:4], lead_s=0.2, trail_s=0.2).samples)
        pcm = pcm_of((work / "speech.wav").read_bytes())[0]
        broker = Broker(work / "broker").start()
        probe = Probe(broker.host, broker.port)
        try:
            print(f"{len(pcm) / 32000:.1f} s of speech over the speech-to-text role, a ping every 50 ms:")
            for engine in args.engines.split(","):
                print(measure(engine, work, broker, probe, pcm), flush=True)
        finally:
            probe.close()
            broker.stop()


if __name__ == "__main__":
    main()
