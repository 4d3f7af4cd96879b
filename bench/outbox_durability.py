"""What durability on power loss costs: fsyncs, milliseconds and bytes written per event and per job.

    python -m bench.outbox_durability [--events 300] [--files 40]

1. One `Outbox.put` with synchronous=FULL (what the agent uses) against NORMAL (what it used):
   milliseconds per put (median, p95) in this process, and fsync/fdatasync calls per put counted
   by `strace -f -c` in a child process.
2. A whole job, end to end: `voice-agent run` under strace with the model-free test transcriber and
   the extractive summarizer, N files dropped in the inbox, connected to a local Mosquitto so events
   are published and deleted as in production. fsyncs per job = (run with N files - run with none)
   / N. The bytes a job makes the agent write (/proc/<pid>/io write_bytes, the writes that reach
   the block layer, i.e. the SD card) are measured in a run without strace.

The figures go into docs/reliability.md ("Power cuts"). Nothing here is a pass/fail check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.agent import AgentProcess, voice_agent_cmd  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.wavs import tone_wav  # noqa: E402

PAYLOAD = (b'{"job_id":"20250101T000000-abcdef12","state":"done","source":{"kind":"inbox","name":"clip.wav"},'
           b'"audio_s":0.5,"timings_ms":{"decode":0.4,"transcribe":0.3,"total":1.2},"ts":"2025-01-01T00:00:00Z",'
           b'"device_id":"bench"}')

CHILD = r"""
import sys
from pathlib import Path
import agent.mqtt.outbox as o
o.PUT_SYNC = sys.argv[3]
box = o.Outbox(Path(sys.argv[1]), max_messages=1_000_000, max_bytes=1_000_000_000)
for _ in range(int(sys.argv[2])):
    box.put("voice/bench/event/job", PAYLOAD)
box.close()
"""


def put_ms(work: Path, sync: str, n: int) -> list[float]:
    import agent.mqtt.outbox as outbox_module

    saved = outbox_module.PUT_SYNC
    outbox_module.PUT_SYNC = sync
    try:
        box = outbox_module.Outbox(work / f"inproc-{sync}.sqlite3", max_messages=1_000_000, max_bytes=1_000_000_000)
    finally:
        outbox_module.PUT_SYNC = saved
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        box.put("voice/bench/event/job", PAYLOAD)
        times.append((time.perf_counter() - t0) * 1000)
    box.close()
    return times


def strace_counts(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
                  timeout: float = 300) -> tuple[int, subprocess.CompletedProcess]:
    """fsync + fdatasync calls made by `argv` and its children."""
    out = subprocess.run(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", *argv], capture_output=True,
                         text=True, cwd=cwd, env=env, timeout=timeout)
    return _count(out.stderr), out


def _count(strace_summary: str) -> int:
    total = 0
    for line in strace_summary.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync"):
            total += int(parts[3])
    return total


def fsyncs_per_put(work: Path, sync: str, n: int) -> float:
    code = f"PAYLOAD = {PAYLOAD!r}\n" + CHILD
    base, _ = strace_counts([sys.executable, "-c", code, str(work / f"s0-{sync}.sqlite3"), "0", sync], REPO)
    many, out = strace_counts([sys.executable, "-c", code, str(work / f"sn-{sync}.sqlite3"), str(n), sync], REPO)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return (many - base) / n


def run_agent(work: Path, broker: Broker, files: int, *, traced: bool) -> tuple[int, int]:
    """(fsyncs, write_bytes) of one agent run that processes `files` files and stops."""
    agent = AgentProcess(work, broker.port, {"log_level": "WARNING", "inbox": {"settle_ms": 100}},
                         device_id=f"bench-{files}-{int(traced)}")
    agent.inbox.mkdir(parents=True, exist_ok=True)
    strace_out = work / "strace.txt"
    cmd = [*voice_agent_cmd(), "run", "--config", str(agent.config_path)]
    if traced:
        cmd = ["strace", "-f", "-c", "-o", str(strace_out), "-e", "trace=fsync,fdatasync", *cmd]
    log = open(agent.log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=work, env=agent.env)
    pid = proc.pid
    try:
        deadline = time.monotonic() + 60
        outbox = Path(agent.config["state_dir"]) / "outbox.sqlite3"
        while not outbox.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)   # connected, engines loaded, startup writes done
        pid = _agent_pid(proc.pid) if traced else proc.pid
        # SIGTERM to strace itself would only detach it, leaving the agent running.
        before = _write_bytes(pid)
        for i in range(files):
            tmp = agent.inbox / f".f{i}.part"
            tmp.write_bytes(tone_wav(0.5 + i / 1000))
            os.rename(tmp, agent.inbox / f"f{i:03d}.wav")
            time.sleep(0.05)
        processed = agent.inbox / "processed"
        while time.monotonic() < deadline + 120:
            if len(list(processed.glob("*.wav.json"))) >= files if processed.exists() else files == 0:
                break
            time.sleep(0.05)
        time.sleep(1.5)   # events published and acknowledged, rows deleted
        os.sync()
        written = _write_bytes(pid) - before
    finally:
        if pid != proc.pid or not traced:
            os.kill(pid, 15)
        else:
            proc.terminate()
        proc.wait(timeout=60)
    return (_count(strace_out.read_text()) if traced else 0), written


def _agent_pid(strace_pid: int) -> int:
    """The traced agent: strace's only child."""
    children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children").read_text().split()
    return int(children[0]) if children else strace_pid


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--files", type=int, default=40)
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        print("strace is not installed (apt-get install strace): fsync counts are skipped", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="outbox-durability-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        print(f"state folder filesystem: {_fs_of(work)}")
        for sync in ("NORMAL", "FULL"):
            ms = put_ms(work, sync, args.events)
            line = (f"put synchronous={sync:<6}: median {statistics.median(ms):.3f} ms, "
                    f"p95 {sorted(ms)[int(len(ms) * 0.95) - 1]:.3f} ms")
            if shutil.which("strace"):
                line += f", {fsyncs_per_put(work, sync, args.events):.2f} fsync/fdatasync per put"
            print(line)
        broker = Broker(work / "broker").start()
        try:
            if shutil.which("strace"):
                idle, _ = run_agent(work / "a0", broker, 0, traced=True)
                busy, _ = run_agent(work / "a1", broker, args.files, traced=True)
                print(f"agent, {args.files} files: {busy} fsyncs, without files {idle}: "
                      f"{(busy - idle) / args.files:.2f} fsyncs per job")
            _, idle_bytes = run_agent(work / "b0", broker, 0, traced=False)
            _, busy_bytes = run_agent(work / "b1", broker, args.files, traced=False)
            print(f"agent, {args.files} files: {busy_bytes / 1024:.0f} KiB written, without files "
                  f"{idle_bytes / 1024:.0f} KiB: {(busy_bytes - idle_bytes) / args.files / 1024:.1f} KiB per job "
                  "(inbox record + outbox WAL/checkpoints)")
        finally:
            broker.stop()
    return 0


def _fs_of(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=10).stdout
        return " ".join(out.splitlines()[-1].split()[:2])
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
