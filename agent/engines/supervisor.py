"""Keep a local model server (llama.cpp, whisper.cpp) alive as a child of the agent.

Why a supervisor: loading a model costs seconds to minutes on a Pi Zero 2W, so the agent keeps
one server warm instead of paying the load per request. A kept server can crash (OOM killer),
hang, or never come up; this module turns all of that into `engine_unavailable` and restarts
with exponential backoff so a crash loop cannot eat the CPU.

No orphans, by three layers: every server runs in its own process group and, on Linux, is armed
with `PR_SET_PDEATHSIG(SIGKILL)` so it dies with the agent (both in `agent.engines.process`);
and `stop()` is called by the engine's `close()`, with an `atexit` hook here stopping whatever is
left.
"""

from __future__ import annotations

import atexit
import collections
import logging
import subprocess
import threading
import time
import weakref

from agent.engines.health import PROBE_TIMEOUT_S, port_open, probe
from agent.engines.process import kill_group, output_lines, spawn, term_group
from agent.errors import EngineError

log = logging.getLogger(__name__)

#: Restart delays double from here up to the cap.
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
#: A server that stayed healthy this long since its last restart gets a fresh backoff.
BACKOFF_RESET_AFTER_S = 60.0
#: Lines of server output kept for error messages (the rest is only logged at DEBUG).
OUTPUT_TAIL_LINES = 40

_live: "weakref.WeakSet[ServerProcess]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Last line of defence when the agent exits without closing its engines."""
    for server in list(_live):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - exiting anyway
            log.exception("could not stop %s at exit", server.name)


class ServerProcess:
    """One supervised server process, addressed by a health URL.

    Thread-safe: `start`, `ensure_running` and `stop` may be called from job threads and the
    monitor thread at once; starts and restarts are serialised.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        health_url: str,
        *,
        start_timeout_s: float,
        health_interval_s: float = 10.0,
        env: dict | None = None,
        health_fallback_url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`env` adds to (not replaces) the agent's environment.

        `health_fallback_url` is probed instead of `health_url` once that answers 404: servers
        such as llama-cpp-python have no /health route, and the engine cannot know in advance.
        """
        if not command:
            raise ValueError("empty server command")
        self.name = name
        self.command = [str(part) for part in command]
        self.health_url = health_url
        self.health_fallback_url = health_fallback_url
        self.start_timeout_s = float(start_timeout_s)
        self.health_interval_s = float(health_interval_s)
        self.env = dict(env) if env else None
        self.headers = dict(headers) if headers else None  # sent with every health probe (the key)
        self.restarts = 0
        self.last_error: str | None = None
        self._lock = threading.RLock()  # serialises start/restart
        self._proc_lock = threading.Lock()  # guards _proc; never held while waiting
        self._proc: subprocess.Popen | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self._abort = threading.Event()  # set by stop(): interrupts a start, forbids restarts
        self._last_attempt_at: float | None = None
        self._backoff_s = BACKOFF_MIN_S
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        _live.add(self)

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the live server process, None when none is running."""
        with self._proc_lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """The process exists (it may still be loading or be hung; see `ensure_running`)."""
        return self.pid is not None

    @property
    def output_tail(self) -> list[str]:
        """The last lines the server printed, for diagnostics."""
        return list(self._output)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the server and wait until its health URL answers 200.

        503 means "still loading the model" and is waited for, as is a refused connection (the
        port opens only once the model is loaded in llama-cpp-python). Raises `engine_unavailable`
        when the process exits, the wait exceeds `start_timeout_s`, or `stop()` interrupts it.
        """
        with self._lock:
            self._abort.clear()
            self._start_locked()

    def ensure_running(self) -> None:
        """Return when the server is alive and healthy; otherwise restart it, respecting backoff.

        Restarts are spaced 1 s, 2 s, 4 s ... up to 60 s apart so a server that crashes on every
        start costs little; inside the backoff window this raises `engine_unavailable` at once
        rather than blocking the caller. A restart that stays healthy for 60 s resets the backoff.
        After `stop()` nothing is restarted (so a late caller cannot resurrect a closed engine)
        until `start()` is called again.
        """
        with self._lock:
            if self._abort.is_set():
                raise EngineError(f"{self.name} is stopped", code="engine_unavailable")
            problem = self._problem()
            now = time.monotonic()
            if problem is None:
                if self._last_attempt_at is not None and now - self._last_attempt_at >= BACKOFF_RESET_AFTER_S:
                    self._backoff_s = BACKOFF_MIN_S
                return
            if self._last_attempt_at is not None and now < self._last_attempt_at + self._backoff_s:
                wait = self._last_attempt_at + self._backoff_s - now
                self.last_error = problem
                raise EngineError(f"{self.name} is down ({problem}); next restart in {wait:.1f} s",
                                  code="engine_unavailable")
            if self._last_attempt_at is not None:
                self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)
            self.restarts += 1
            log.warning("restarting %s (%s), restart #%d", self.name, problem, self.restarts)
            self._terminate(grace_s=2.0)
            self._start_locked()

    def kill(self) -> None:
        """SIGKILL the server's process group now, for a server known to be hung.

        Unlike `stop()` the monitor keeps running, so the server comes back on the next
        `ensure_running` (from the monitor or the next request).
        """
        self._terminate(grace_s=0.0)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the monitor and the server: SIGTERM the group, wait `grace_s`, then SIGKILL.

        Idempotent. SIGCONT follows SIGTERM so that a stopped (SIGSTOP) server can act on it.
        """
        self._abort.set()
        self._monitor_stop.set()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=PROBE_TIMEOUT_S + grace_s + 1)
        self._monitor = None
        self._terminate(grace_s=grace_s)

    # -- monitor -----------------------------------------------------------------------------

    def start_monitor(self, guard: threading.Lock | None = None) -> None:
        """Call `ensure_running` every `health_interval_s` on a daemon thread until `stop()`.

        `guard` is a lock the engine holds while a request is in flight; the check is skipped
        when it is taken, because some servers (llama-cpp-python) answer health routes only
        between requests and a long inference must not look like a hang.
        """
        if self._monitor is not None and self._monitor.is_alive():
            return
        self._monitor_stop.clear()
        self._monitor = threading.Thread(target=self._watch, args=(guard,), name=f"{self.name}-monitor",
                                         daemon=True)
        self._monitor.start()

    def _watch(self, guard: threading.Lock | None) -> None:
        while not self._monitor_stop.wait(self.health_interval_s):
            if guard is not None and not guard.acquire(blocking=False):
                continue
            try:
                self.ensure_running()
            except EngineError as exc:
                log.warning("%s: %s", self.name, exc.message)
            except Exception:  # noqa: BLE001 - the monitor must survive anything
                log.exception("%s monitor failed", self.name)
            finally:
                if guard is not None:
                    guard.release()

    # -- internals ---------------------------------------------------------------------------

    def _start_locked(self) -> None:
        """Spawn and wait for health; unlike `start()` it leaves a `stop()` request in force."""
        with self._lock:
            if self.running:
                return
            self._last_attempt_at = time.monotonic()
            try:
                self._spawn()
                self._wait_healthy()
            except EngineError as exc:
                self.last_error = exc.message
                self._terminate(grace_s=0.0)
                raise
            self.last_error = None

    def _problem(self) -> str | None:
        """Why the server is not usable right now, or None when it is."""
        with self._proc_lock:
            proc = self._proc
        if proc is None:
            return "not started"
        code = proc.poll()
        if code is not None:
            return f"process exited with code {code}"
        status = self._health_status()
        if status == 200:
            return None
        return "health check timed out" if status is None else f"health check answered {status}"

    def _health_status(self) -> int | None:
        status = probe(self.health_url, headers=self.headers)
        if status == 404 and self.health_fallback_url and self.health_url != self.health_fallback_url:
            log.info("%s has no %s; health-checking %s instead", self.name, self.health_url,
                     self.health_fallback_url)
            self.health_url = self.health_fallback_url
            status = probe(self.health_url, headers=self.headers)
        return status

    def _spawn(self) -> None:
        if port_open(self.health_url):
            # Otherwise the other process would answer our health checks while ours fails to bind.
            raise EngineError(f"{self.name}: {self.health_url} is already served by another process",
                              code="engine_unavailable")
        self._output.clear()
        try:
            proc = spawn(self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
        except OSError as exc:
            raise EngineError(f"{self.name}: cannot start {self.command[0]}: {exc.strerror or exc}",
                              code="engine_unavailable") from exc
        with self._proc_lock:
            self._proc = proc
        # A drained pipe cannot fill up and block the server; only a bounded tail is kept.
        threading.Thread(target=self._drain, args=(proc,), name=f"{self.name}-output", daemon=True).start()
        log.info("%s started (pid %d)", self.name, proc.pid)

    def _drain(self, proc: subprocess.Popen) -> None:
        for line in output_lines(proc):
            self._output.append(line)
            log.debug("%s: %s", self.name, line)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        delay = 0.05
        with self._proc_lock:
            proc = self._proc
        assert proc is not None
        while True:
            if self._abort.is_set():
                raise EngineError(f"{self.name}: stopped while starting", code="engine_unavailable")
            code = proc.poll()
            if code is not None:
                proc.wait()
                time.sleep(0.05)  # let the drain thread catch the last words
                tail = self._output[-1] if self._output else "no output"
                raise EngineError(f"{self.name} exited with code {code} while starting: {tail}",
                                  code="engine_unavailable")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError(f"{self.name} not healthy within {self.start_timeout_s:g} s",
                                  code="engine_unavailable")
            status = self._health_status()
            if status == 200:
                log.info("%s healthy", self.name)
                return
            self._abort.wait(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)

    def _terminate(self, grace_s: float) -> None:
        """Signal the whole process group and reap the leader; never leaves a zombie behind."""
        with self._proc_lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the server its group's leader
        if proc.poll() is None and grace_s > 0 and not term_group(proc, grace_s):
            log.warning("%s ignored SIGTERM for %g s; killing it", self.name, grace_s)
        # SIGKILL also sweeps anything the server forked that outlived it.
        kill_group(proc)
        log.info("%s stopped (pid %d)", self.name, pgid)
