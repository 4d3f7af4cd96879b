"""Broker access for end-to-end tests: a Mosquitto with a password file (and an optional ACL), and
waiting on an agent that must not get online or must log a refusal.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tests.support.agent import AgentProcess
from tests.support.broker import Broker, free_port
from tests.support.probe import Probe


def refused_offline(agent: AgentProcess, probe: Probe, pattern: str, count: int = 2) -> list[str]:
    """Wait for `count` refusals matching `pattern` (a regex) in the agent's log, then require that it
    is still running and never got online. The refusal lines are the positive marker: each one
    shows a connection attempt that has ended, so "not online" is checked after the attempts, not
    after a guessed time. Returns the lines."""
    refusals = wait_log(agent, pattern, count=count)
    assert agent.alive(), f"the agent exited:\n{agent.log()[-2000:]}"
    assert not [m for m in probe.on(f"{agent.root}/availability") if m.text == "online"], "the agent got online"
    return refusals


def wait_log(agent: AgentProcess, pattern: str, count: int = 1, timeout: float = 20) -> list[str]:
    """Wait until `pattern` (a regex) matches `count` lines of the agent's log."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in agent.log().splitlines() if re.search(pattern, line)]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, (f"{count} x /{pattern}/ not in the log within {timeout}s; "
                                             f"log tail:\n{agent.log()[-2500:]}")
        time.sleep(0.2)


def passwd_file(path: Path, users: dict[str, str]) -> Path:
    for i, (user, password) in enumerate(users.items()):
        args = ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(path), user, password]
        subprocess.run(args, check=True, capture_output=True)
    path.chmod(0o600)
    return path


def auth_broker(workdir: Path, users: dict[str, str], acl: str | None = None) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {passwd_file(workdir / 'passwd', users)}\n")
    if acl is not None:
        (workdir / "acl").write_text(acl)
        conf += f"acl_file {workdir / 'acl'}\n"
    return Broker(workdir, extra_conf=conf, port=port).start()
