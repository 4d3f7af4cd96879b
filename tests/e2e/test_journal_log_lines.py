"""The agent's log as the journal sees it: syslog priorities and no timestamp when standard error is
the journal stream, timestamps otherwise, and a missing model said at error level while `run` still
starts.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.broker import free_port


def test_run_still_starts_with_a_missing_model_and_says_why_at_error_level(tmp_path: Path) -> None:
    """At `run`, an engine that cannot load is an ERROR line (and the engine state), not an exit:
    the agent stays reachable so the config can be fixed over MQTT."""
    agent = AgentProcess(tmp_path / "agent", free_port(), {
        "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": sys.executable, "model": None}}})
    agent.start()
    try:
        _wait_log(agent, "transcriber whisper_cpp unavailable")
        assert agent.alive()
        assert "no whisper.cpp model configured" in agent.log()
    finally:
        agent.stop()


def _wait_log(agent: AgentProcess, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while text not in agent.log():
        assert agent.alive(), f"agent exited {agent.proc.poll()} before logging {text!r}:\n{agent.log()}"
        assert time.monotonic() < deadline, f"no {text!r} in the log within {timeout} s:\n{agent.log()}"
        time.sleep(0.1)
    return agent.log()


def _agent_log(tmp_path: Path, *, journal: bool | str) -> list[str]:
    """Run an agent whose engine cannot load (ERROR) against a closed port (WARNING), at DEBUG."""
    workdir = tmp_path / "agent"
    workdir.mkdir()
    log_path = workdir / "agent.log"
    log_path.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal is True:
        st = os.stat(log_path)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    elif journal:
        env["JOURNAL_STREAM"] = journal
    agent = AgentProcess(workdir, free_port(), {
        "log_level": "DEBUG",
        "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": sys.executable, "model": None}}},
        env=env)
    agent.start()
    try:
        _wait_log(agent, "unavailable")
        _wait_log(agent, "retrying")
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=30)
    return agent.log().splitlines()


def test_log_lines_carry_syslog_priorities_and_no_timestamp_under_journald(tmp_path: Path) -> None:
    lines = [line for line in _agent_log(tmp_path, journal=True) if line.strip()]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<3>") and "whisper_cpp unavailable" in line for line in lines), lines
    assert any(line.startswith("<4>") and "retrying" in line for line in lines), lines
    assert any(line.startswith("<6>") for line in lines), lines
    assert not any(line[3:].split(" ", 1)[0][:4].isdigit() for line in lines), "a timestamp is still there"
    assert not any(" ERROR " in line or " WARNING " in line or " INFO " in line for line in lines), lines


@pytest.mark.parametrize("journal", [False, "12345:67890"], ids=["unset", "another-stream"])
def test_log_lines_keep_their_timestamp_when_stderr_is_not_the_journal(tmp_path: Path, journal: bool | str) -> None:
    """Unset, or inherited by a process whose standard error is somewhere else: today's format."""
    lines = [line for line in _agent_log(tmp_path, journal=journal) if line.strip()]
    assert not any(line.startswith("<") for line in lines), lines
    assert any(line[:4].isdigit() and " ERROR agent" in line and "whisper_cpp unavailable" in line
               for line in lines), lines
    assert any(" WARNING " in line and "retrying" in line for line in lines), lines
