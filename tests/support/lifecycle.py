"""Driving an agent the way systemd does: sd_notify captured on a datagram socket the test binds, a
stand-in whisper.cpp program that can hang, be slow or fail, tone files dropped into the inbox and
the records and alerts that come out.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from tests.support.agent import AgentProcess
from tests.support.probe import Probe
from tests.support.wavs import tone_wav


STANDIN_WHISPER = '''#!{python}
"""STAND-IN for the whisper.cpp CLI, written by tests/support/lifecycle.py. It does NOT transcribe.

Honours the CLI contract the agent relies on: -m MODEL, -f INPUT (repeatable; "-" = WAV on
stdin), text on stdout, or with -otxt one <-of NAME>.txt per input. Behaviour comes from
behaviour.json beside it, read at every run:
  warmup_s: seconds the warm-up run (audio on stdin) takes; it then writes warmed.txt
  job: "ok" | "slow" | "hang" | "fail";  job_s: seconds a "slow" job takes
"""
import json, os, sys, time

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "behaviour.json")) as f:
    behaviour = json.load(f)
args = sys.argv[1:]
inputs = [args[i + 1] for i, a in enumerate(args) if a == "-f"]
outputs = [args[i + 1] for i, a in enumerate(args) if a == "-of"]
if inputs == ["-"]:
    sys.stdin.buffer.read()
    time.sleep(behaviour.get("warmup_s", 0))
    with open(os.path.join(here, "warmed.txt"), "w") as f:
        f.write(repr(time.time()))
    sys.exit(0)
job = behaviour.get("job", "ok")
if job == "hang":
    while True:
        time.sleep(3600)
if job == "fail":
    sys.stderr.write("error: the stand-in was told to fail\\n")
    sys.exit(1)
if job == "slow":
    time.sleep(behaviour.get("job_s", 3))
for i, path in enumerate(inputs):
    text = "stand-in transcript of " + os.path.basename(path)
    if outputs:
        with open(outputs[i] + ".txt", "w") as f:
            f.write(text + "\\n")
    else:
        print(text)
'''


class StandInWhisper:
    """The stand-in program, its dummy model and its behaviour file, in a folder of its own."""

    def __init__(self, folder: Path, **behaviour: Any) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.binary = folder / "whisper-standin"
        self.binary.write_text(STANDIN_WHISPER.replace("{python}", sys.executable))
        self.binary.chmod(0o755)
        self.model = folder / "ggml-standin.bin"
        self.model.write_bytes(b"not a model: read by nobody")
        self.set(**behaviour)

    def set(self, **behaviour: Any) -> None:
        tmp = self.folder / "behaviour.json.tmp"
        tmp.write_text(json.dumps(behaviour))
        os.replace(tmp, self.folder / "behaviour.json")

    @property
    def warmed_at(self) -> float | None:
        path = self.folder / "warmed.txt"
        return float(path.read_text()) if path.exists() else None

    def config(self, **jobs: Any) -> dict[str, Any]:
        return {"transcriber": {"engine": "whisper_cpp", "timeout_s": 600,
                                "whisper_cpp": {"binary": str(self.binary), "model": str(self.model),
                                                "timeout_s": 600, "threads": 1, "batch": False}},
                "jobs": jobs}

    def running(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.binary) in part for part in (proc.info.get("cmdline") or [])):
                found.append(proc)
        return found


class NotifySocket:
    """Stands in for systemd: a bound AF_UNIX datagram socket, every datagram kept with its times."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="va-ops-", dir="/tmp")   # socket paths: 108 bytes at most
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, float, str]] = []   # (monotonic, wall clock, text)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int = 1_000_000) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(watchdog_usec)}

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            with self._cond:
                self.messages.append((time.monotonic(), time.time(), data.decode()))
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[str], bool], *, after: float = 0.0, timeout: float = 15,
                 what: str = "") -> tuple[float, float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m[0] >= after and pred(m[2]):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no sd_notify {what} within {timeout} s; got {self.texts()[-10:]}")
                self._cond.wait(left)

    def between(self, start: float, end: float) -> list[str]:
        with self._cond:
            return [text for t, _, text in self.messages if start <= t < end]

    def texts(self) -> list[str]:
        with self._cond:
            return [text for _, _, text in self.messages]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def start_ready(agent: AgentProcess, probe: Probe, notify: NotifySocket) -> AgentProcess:
    """Start and wait for READY=1, which the main loop sends only once start() has returned.

    `availability online` is not enough before dropping a file: MQTT connects on its own thread
    while the inbox is still starting, and a file renamed in between its initial scan and its
    watch being set up would not be seen until the next start.
    """
    after = time.monotonic()
    agent.start(probe)
    notify.wait_for(lambda t: t.startswith("READY=1"), after=after, what="READY=1")
    return agent


def drop(inbox: Path, name: str, seconds: float = 0.3, freq: float = 440.0) -> Path:
    """Write a WAV into the inbox the way a well-behaved producer does (write aside, then rename)."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(tone_wav(seconds, freq=freq))
    os.rename(tmp, inbox / name)
    return inbox / name


def alerts_of(probe: Probe, root: str, kind: str) -> list[dict]:
    return [m.json for m in probe.on(f"{root}/event/alert") if m.payload and m.json.get("kind") == kind]


def records(inbox: Path) -> dict[str, list[str]]:
    """Where the inbox's files and records are: waiting, claimed, processed, failed."""
    def names(folder: Path, pattern: str = "*") -> list[str]:
        return sorted(p.name for p in folder.glob(pattern)) if folder.exists() else []
    return {"waiting": [n for n in names(inbox) if n.endswith(".wav")],
            # hidden names there are the agent's bookkeeping (the job id kept for a retry)
            "claimed": [n for n in names(inbox / ".processing") if not n.startswith(".")],
            "processed": names(inbox / "processed"), "failed": names(inbox / "failed")}


def used_percent() -> float:
    return psutil.virtual_memory().percent
