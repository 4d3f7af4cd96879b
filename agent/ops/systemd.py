"""sd_notify and a watchdog that only vouches for the agent while every part of it is alive.

No libsystemd dependency: the protocol is one datagram of "KEY=VALUE" lines to the AF_UNIX socket
named in $NOTIFY_SOCKET (see sd_notify(3)), as gunicorn does it. Outside systemd the variable is
unset and every call is a no-op, so the same code runs under pytest, in a shell and in the unit.

The watchdog is only useful if it fails when the agent is wedged, not merely when the process is
gone. A ping from a thread of its own would keep a deadlocked agent alive forever, so the pinger
asks a `WatchdogGate` first: the main loop, the MQTT loop and each job worker report heartbeats,
and WATCHDOG=1 is sent only while none of them is overdue (magma's approach). When one is stuck we
say which in the log, once, and stop pinging; systemd then aborts us (SIGABRT, so faulthandler can
dump every thread's stack to the journal) and restarts the unit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def _socket_address(raw: str | None) -> str | None:
    """$NOTIFY_SOCKET as an address for sendto(); '@name' is Linux's abstract namespace."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # systemd >= 254 may also hand out "vsock:..." addresses (VMs); we do not run in one.
    log.debug("unsupported NOTIFY_SOCKET %r: notifications disabled", raw)
    return None


class Notifier:
    """Sends sd_notify messages; silent and harmless when not started by systemd.

    $NOTIFY_SOCKET is read once at construction, so later changes to the environment (tests,
    child processes) do not redirect an agent that is already running. Sending never raises: a
    failed status update must not take down the process it reports on.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._address = _socket_address(environ.get("NOTIFY_SOCKET"))
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: Any) -> bool:
        """Send one datagram "KEY=VALUE\\n..." in argument order; True when it was sent.

        Keys are upper-cased (notify(status="x") == notify(STATUS="x")). Newlines inside a value
        would start a new field, so they are replaced by spaces.
        """
        if self._address is None or not fields:
            return False
        lines = [f"{key.upper()}={_one_line(value)}" for key, value in fields.items()]
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
        except Exception as exc:  # noqa: BLE001 - never let a notification fail the caller
            log.debug("sd_notify %s failed: %s", ",".join(fields), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup finished: systemd marks the unit active and starts After= units."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Free-form text shown by `systemctl status`."""
        return self.notify(STATUS=text)

    def reloading(self) -> bool:
        """A reload began; MONOTONIC_USEC lets systemd tell this reload from an older one."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        """Shutdown began, so a slow stop is not mistaken for a hang."""
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        """Keep-alive ping; only `WatchdogPinger` should call this, and only when healthy."""
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(value: Any) -> str:
    text = str(int(value)) if isinstance(value, bool) else str(value)
    return text.replace("\r", " ").replace("\n", " ")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """How often to ping, in seconds: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off, malformed, or meant for another process ($WATCHDOG_PID set and
    not ours, e.g. a child that inherited the environment).
    """
    environ = os.environ if env is None else env
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = environ.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        usec = int(raw)
    except ValueError:
        log.debug("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", raw, pid)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


@dataclass
class _Part:
    max_silence_s: float
    last_beat: float


class WatchdogGate:
    """Named heartbeats; `healthy()` is False while any registered part is overdue.

    A part is healthy while beat() comes at least every `max_silence_s`: the loops (main, MQTT).
    Jobs are not parts: a job past jobs.timeout_s is stopped by its own deadline
    (agent.engines.deadline), never by having systemd restart the whole agent.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._parts: dict[str, _Part] = {}
        self._lock = threading.Lock()

    def register(self, name: str, max_silence_s: float) -> None:
        """Start watching `name`; it counts as having just beaten."""
        with self._lock:
            self._parts[name] = _Part(max_silence_s=max_silence_s, last_beat=self._clock())

    def beat(self, name: str) -> None:
        now = self._clock()
        with self._lock:
            self._parts[name].last_beat = now

    def healthy(self) -> tuple[bool, list[str]]:
        """(all parts alive, names of the stuck parts, sorted)."""
        now = self._clock()
        with self._lock:
            stuck = sorted(name for name, part in self._parts.items() if _overdue(part, now))
        return not stuck, stuck


def _overdue(part: _Part, now: float) -> bool:
    return now - part.last_beat > part.max_silence_s


class WatchdogPinger:
    """A thread that sends WATCHDOG=1 every `interval` seconds while the gate is healthy.

    It keeps checking while unhealthy, so a part that recovers before systemd's deadline (the
    full WatchdogSec, twice our interval) makes pinging resume and nothing is restarted.
    """

    def __init__(self, gate: WatchdogGate, notifier: Notifier, interval: float | None = None) -> None:
        self._gate = gate
        self._notifier = notifier
        self.interval = watchdog_interval() if interval is None else interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start pinging; a no-op when systemd did not ask for a watchdog."""
        if not self.interval or self._thread is not None:
            if not self.interval:
                log.debug("systemd watchdog not enabled")
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        assert self.interval is not None
        reported: list[str] = []
        while True:
            ok, stuck = self._gate.healthy()
            if ok:
                if reported:
                    log.warning("watchdog: %s recovered; pinging systemd again", ", ".join(reported))
                    reported = []
                self._notifier.watchdog()
            elif not reported:
                reported = stuck
                log.error("watchdog: stuck: %s; no longer pinging systemd, which will restart the agent",
                          ", ".join(stuck))
            if self._stop.wait(self.interval):
                return
