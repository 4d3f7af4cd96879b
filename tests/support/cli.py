"""Run `voice-agent` as a user would: a subprocess, its output captured, bounded by a timeout."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.agent import voice_agent_cmd


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*voice_agent_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)
