"""A TEST SUPERVISOR standing in for systemd (which cannot run a unit here), as a standalone script.

    python tests/support/supervisor.py --events FILE -- voice-agent run --config C

It does what the shipped unit (systemd/voice-agent.service) tells systemd to do, no more:
- the child gets INVOCATION_ID, as every systemd service does (the agent then exits for a
  restart instead of re-executing itself);
- exit 75 (RestartForceExitStatus=75) starts it again after RESTART_SEC; any other exit ends
  the supervisor with that code, except a non-zero, non-78 one (Restart=on-failure), restarted too;
- SIGUSR1 is `systemctl restart`: SIGTERM to the child, wait, start again (the Ansible role's
  restart command in tests);
- SIGTERM / SIGINT stop the child and the supervisor.
Each start and exit is appended to FILE as a JSON line {"event": "start"|"exit", "pid", "code", "t"}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

RESTART_SEC = 0.2
RESTART_FORCE = 75
RESTART_PREVENT = 78


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    restart, stop = threading.Event(), threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: restart.set())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def record(event: str, **data: object) -> None:
        with open(args.events, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "t": time.time(), **data}) + "\n")

    while True:
        child = subprocess.Popen(command, env={**os.environ, "INVOCATION_ID": uuid.uuid4().hex})
        record("start", pid=child.pid)
        while child.poll() is None:
            if restart.is_set() or stop.is_set():
                child.send_signal(signal.SIGTERM)
                child.wait()
                break
            time.sleep(0.05)
        code = child.returncode
        record("exit", pid=child.pid, code=code)
        if stop.is_set():
            return 0
        if restart.is_set():
            restart.clear()
        elif code == RESTART_FORCE or (code not in (0, RESTART_PREVENT) and code > 0):
            pass
        else:
            return code
        time.sleep(RESTART_SEC)


if __name__ == "__main__":
    sys.exit(main())
