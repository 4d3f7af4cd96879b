"""The two sides of an accuracy comparison on the same recordings: the bare engine and the agent.

Why both in one place: the test (tests/e2e/test_real_speech_accuracy.py) and the bench (bench/speech_accuracy.py)
must compare exactly the same things, or a bench row and a test verdict could disagree.

- `bare_whisper_cpp`: the whisper.cpp CLI run file by file, the way a user runs it by hand
  (its own defaults: 5 beams, the full 30 s window), each file as a 16 kHz WAV (the CLI reads no
  other rate). Timed per file, in sequence.
- `agent_burst`: `voice-agent run` as a subprocess on a real broker; paused, every file dropped
  into the inbox at once, resumed, and timed until the last record is written, so the agent's
  batching sees the whole burst as a user's burst would be seen.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tests.support.agent import AgentProcess
from tests.support.probe import Probe
from tests.support.real_speech import Recording

# What the models README shows a user typing; everything else is whisper.cpp's own default.
BARE_FLAGS = ("-l", "en", "-t", "2", "-nt", "-np")


@dataclass
class RunResult:
    """Each file's text by file name, the wall time the whole set took, and the CPU seconds it
    used (user + system, engine processes included): on a shared machine wall time swings
    several-fold with other work, CPU time far less, so ratios are given in both."""

    texts: dict[str, str]
    seconds: float
    per_file_s: dict[str, float] = field(default_factory=dict)
    cpu_s: float = float("nan")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """A process's own CPU seconds plus those of its children it has waited for (whisper.cpp runs)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def to_16k_wav(source: Path, target: Path) -> Path:
    """sox's conversion to 16 kHz mono 16-bit: what the CLI needs, and the reference conversion."""
    subprocess.run(["sox", str(source), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer",
                    str(target)], check=True, capture_output=True, timeout=60)
    return target


def bare_whisper_cpp(binary: Path, model: Path, recordings: Sequence[Recording],
                     extra: Sequence[str] = ()) -> RunResult:
    """One CLI run per file, in order; text is stdout with whitespace collapsed."""
    texts: dict[str, str] = {}
    per_file: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bare-whisper-") as tmp:
        converted = [to_16k_wav(r.path, Path(tmp) / r.name) for r in recordings]
        cpu_before = _children_cpu_s()
        for rec, wav in zip(recordings, converted):
            started = time.monotonic()
            out = subprocess.run([str(binary), "-m", str(model), "-f", str(wav), *BARE_FLAGS, *extra],
                                 check=True, capture_output=True, timeout=300)
            per_file[rec.name] = time.monotonic() - started
            lines = [line.strip() for line in out.stdout.decode("utf-8", "replace").splitlines()]
            texts[rec.name] = " ".join(line for line in lines if line and line != "[BLANK_AUDIO]")
        cpu = _children_cpu_s() - cpu_before
    return RunResult(texts, sum(per_file.values()), per_file, cpu)


def _drop(inbox: Path, name: str, data: bytes) -> None:
    """Hidden temp file then rename: the file appears whole, as a careful writer delivers it."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)


def agent_burst(workdir: Path, broker_port: int, transcriber: dict[str, Any], recordings: Sequence[Recording],
                *, extra_config: dict[str, Any] | None = None, timeout_s: float = 600,
                ready_timeout_s: float = 180) -> RunResult:
    """All files at once through the agent's inbox; texts from the processed records."""
    config: dict[str, Any] = {"log_level": "INFO", "transcriber": transcriber, "summarizer": {"engine": "none"}}
    config.update(extra_config or {})
    agent = AgentProcess(workdir, broker_port, config)
    probe = Probe("127.0.0.1", broker_port, subscribe=(f"{agent.root}/#",))
    try:
        agent.start(probe, timeout=60)
        try:
            probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"],
                           timeout=ready_timeout_s, what="transcriber warmed up")
        except AssertionError:
            raise AssertionError(f"transcriber not ready; log:\n{agent.log()[-3000:]}")
        probe.request(agent.root, "pause")
        for rec in recordings:
            _drop(agent.inbox, rec.name, rec.path.read_bytes())
        # all settled and waiting: the inbox announces each complete file as `queued`
        names = {rec.name for rec in recordings}
        probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "queued" and
                       m.json["source"]["name"] in names, count=len(names), timeout=60, what="every file queued")
        processed = agent.inbox / "processed"
        assert agent.proc is not None
        cpu_before = process_cpu_s(agent.proc.pid)
        started = time.monotonic()
        probe.request(agent.root, "resume")
        deadline = started + timeout_s
        while True:
            done = list(processed.glob("*.wav.json")) if processed.exists() else []
            failed = list((agent.inbox / "failed").glob("*.error.json")) if (agent.inbox / "failed").exists() else []
            if len(done) + len(failed) >= len(recordings):
                break
            if time.monotonic() > deadline or not agent.alive():
                raise AssertionError(f"{len(done)}/{len(recordings)} transcribed after {timeout_s} s; "
                                     f"log:\n{agent.log()[-3000:]}")
            time.sleep(0.05)
        seconds = time.monotonic() - started
        cpu = process_cpu_s(agent.proc.pid) - cpu_before
        if failed:
            raise AssertionError(f"files failed: {[p.name for p in failed]}; log:\n{agent.log()[-3000:]}")
        texts = {p.name[:-len(".json")]: json.loads(p.read_text())["transcript"] for p in done}
        return RunResult(texts, seconds, cpu_s=cpu)
    finally:
        probe.close()
        agent.stop()


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
