"""CPU share of continuous listening: agent process CPU time over 30 s of real-time audio.

Budget on a Pi Zero 2W: 2 % of one core. Runs the agent as a subprocess against a local
Mosquitto (as the tests do) with the model-free `bench_metadata` transcriber, so the figure is
the listening path (capture, VAD, segmenting, spooling, events) plus the agent's idle cost:

- `listening-wav`: `--listen-wav` at real-time pace;
- `listening-mic`: real PortAudio/ALSA with the default settings (16 kHz, 1600-frame buffers,
  120 ms reads). ALSA's `file` plugin reads from a named pipe that this script feeds at real-time
  pace (the plugin itself is not paced; PortAudio's probing opens and closes the pipe, so the
  writer reopens it);
- `listening-mic-quiet-room`: the same with only -60 dBFS noise (no segments, so no jobs: the
  cost of listening itself);
- `idle`: an agent that does not listen, for comparison.

    .venv/bin/python bench/listen_cpu.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.audio.wav import write_wav  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.alsa import fake_microphone_env  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.probe import Probe  # noqa: E402
from tests.support.speech import build_speech, white_noise  # noqa: E402

WARMUP_S = 2.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0   # utime + stime in clock ticks (USER_HZ = 100)


def feed_fifo(fifo: Path, data: bytes, stop: threading.Event) -> None:
    """Write `data` into the named pipe at 16 kHz real-time pace, reopening after each reader leaves."""
    pos, chunk = 0, 3200
    while pos < len(data) and not stop.is_set():
        try:
            with open(fifo, "wb", buffering=0) as f:
                t0, start = time.monotonic(), pos
                while pos < len(data) and not stop.is_set():
                    wait = t0 + (pos - start) / 32000 - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    f.write(data[pos:pos + chunk])
                    pos += chunk
        except BrokenPipeError:
            continue


def measure(workdir: Path, broker: Broker, probe: Probe, seconds: float, name: str, args: list[str],
            config: dict | None = None, env: dict[str, str] | None = None) -> dict:
    agent = AgentProcess(workdir / name, broker.port, {"log_level": "INFO", **(config or {})}, device_id=name,
                         args=args, env=env)
    agent.start(probe)
    try:
        time.sleep(WARMUP_S)
        assert agent.proc is not None
        c0, t0 = cpu_seconds(agent.proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(agent.proc.pid), time.monotonic()
        vad = [m.json for m in probe.on(f"{agent.root}/event/vad")]
        return {"agent": name, "cpu_s": round(c1 - c0, 3), "wall_s": round(t1 - t0, 2),
                "share_of_one_core_percent": round(100 * (c1 - c0) / (t1 - t0), 2),
                "speech_segments": sum(e["event"] == "speech_end" for e in vad)}
    finally:
        agent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--listen", type=json.loads, default={},
                        help='extra `listen` settings as JSON, e.g. \'{"frames_per_buffer": 480, "read_ms": 30}\'')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="listen-cpu-") as tmp:
        workdir = Path(tmp)
        one = build_speech()
        repeats = int(np.ceil((args.seconds + WARMUP_S + 2) / one.duration_s))
        talk = np.concatenate([one.samples] * repeats)
        wav = workdir / "talk.wav"
        write_wav(wav, talk)
        quiet = white_noise(len(talk) / 16000, -60.0)   # a quiet room: listening with no speech to process
        broker = Broker(workdir / "broker").start()
        probe = Probe(broker.host, broker.port)
        stop = threading.Event()

        def mic(name: str, samples: np.ndarray) -> dict:
            fifo = workdir / f"{name}.fifo"
            os.mkfifo(fifo)
            threading.Thread(target=feed_fifo, args=(fifo, samples.astype("<i2").tobytes(), stop),
                             daemon=True).start()
            return measure(workdir, broker, probe, args.seconds, name, [],
                           {"listen": {**args.listen, "enabled": True}},
                           env=fake_microphone_env(workdir / f"home-{name}", fifo))

        try:
            results = [measure(workdir, broker, probe, args.seconds, "listening-wav", ["--listen-wav", str(wav)],
                               {"listen": args.listen}),
                       mic("listening-mic", talk),
                       mic("listening-mic-quiet-room", quiet),
                       measure(workdir, broker, probe, args.seconds, "idle", [])]
        finally:
            stop.set()
            probe.close()
            broker.stop()
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
