"""Runs `voice-agent run` as a subprocess, the way a user or systemd would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agent.settings import TEST_ENGINES_ENV
from tests.support.probe import Probe

REPO = Path(__file__).resolve().parents[2]


def voice_agent_cmd() -> list[str]:
    """The installed console script when present (what users run), else `python -m agent`."""
    script = Path(sys.executable).with_name("voice-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class AgentProcess:
    def __init__(self, workdir: Path, broker_port: int, config: dict[str, Any] | None = None,
                 device_id: str = "test-dev", env: dict[str, str] | None = None,
                 args: list[str] | None = None, wrap: list[str] | None = None) -> None:
        """`wrap`: a command the agent's command line is appended to (a supervisor)."""
        self.workdir = workdir
        self.wrap = wrap or []
        self.workdir.mkdir(parents=True, exist_ok=True)
        base = {
            "device_id": device_id,
            "state_dir": str(workdir / "state"),
            "log_level": "DEBUG",
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 0.2, "reconnect_max_s": 1},
            "inbox": {"path": str(workdir / "inbox"), "settle_ms": 300},
            "transcriber": {"engine": "bench_metadata"},
            "summarizer": {"engine": "extractive"},
            "telemetry": {"interval_s": 0},
        }
        self.config = deep_update(base, config or {})
        self.config_path = workdir / "config.yaml"
        self.write_config(self.config)
        self.device_id = self.config["device_id"]
        self.root = f"{self.config.get('mqtt', {}).get('topic_prefix', 'voice')}/{self.device_id}"
        # The harness runs the model-free test engine (bench_metadata): switch test engines on.
        self.env = {**os.environ, TEST_ENGINES_ENV: "1", **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "agent.log"
        self.inbox = Path(self.config["inbox"]["path"])

    def write_config(self, config: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.config_path)

    def start(self, probe: Probe | None = None, *, stdin: Any = subprocess.DEVNULL, wait_online: bool = True,
              timeout: float = 30) -> "AgentProcess":
        started = time.time()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.wrap, *voice_agent_cmd(), "run", "--config", str(self.config_path), *self.args],
                                     stdin=stdin, stdout=log, stderr=log, env=self.env, cwd=self.workdir)
        if probe is not None and wait_online:
            n = len([m for m in probe.on(f"{self.root}/availability") if m.payload == b"online"])
            try:
                probe.wait_for(f"{self.root}/availability", lambda m: m.text == "online", count=n + 1,
                               timeout=timeout, what="availability online")
            except AssertionError:
                raise AssertionError(f"agent not online; exit={self.proc.poll()} log:\n{self.log()[-3000:]}")
        self.started = started
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                self.terminate(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
