"""What systemd is told: READY=1 and STATUS= (`Readiness`), and the watchdog's heartbeats (`Watchdog`).

READY=1 waits for MQTT and for every engine to settle: loaded, or failed to load (a failure is
reported in STATUS= and in `state`, and does not hold READY back: retrying cannot fix a missing
model, and systemd would only kill and restart us in a loop). It is sent at the latest
READY_DEADLINE_S after start, so a broker that is down at boot does not make systemd give up on
an agent that works offline (the outbox keeps events). Each decision is a pure function here
(tested without a process); the two classes hold the little state around them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from agent.mqtt.link import live
from agent.ops.systemd import Notifier, WatchdogGate, WatchdogPinger, watchdog_interval

log = logging.getLogger(__name__)

#: READY=1 is sent at the latest this long after start even if MQTT is not connected or an
#: engine is still loading: below systemd's default TimeoutStartSec (90 s), so a broker that is
#: down at boot or a slow model does not turn into a restart loop that cannot fix either.
READY_DEADLINE_S = 60.0

#: STATUS= is refreshed at least this often (and at once when the line changes).
STATUS_EVERY_S = 10.0

def engines_settled(engines: Mapping[str, Mapping[str, Any]]) -> bool:
    """Every engine either loaded or failed to load (a failure is final until the config changes,
    so it must not hold READY back)."""
    return all(bool(d.get("ready")) or d.get("error") is not None for d in engines.values())


def ready_due(connected: bool, engines: Mapping[str, Mapping[str, Any]], waited_s: float,
              deadline_s: float = READY_DEADLINE_S) -> bool:
    """READY=1 once MQTT is connected and the engines have settled, or at the latest after `deadline_s`."""
    return (connected and engines_settled(engines)) or waited_s >= deadline_s


def status_line(*, phase: str, connected: bool, mqtt_error: str | None, running: int, limit: int,
                done: int, failed: int, rejected: int, memory_level: str,
                engines: Mapping[str, Mapping[str, Any]], alerts: list[str]) -> str:
    """One line for `systemctl status` (STATUS=): what the agent does and what is wrong."""
    parts = [phase, "mqtt connected" if connected else f"mqtt {mqtt_error or 'connecting'}",
             f"jobs {running}/{limit}", f"{done} done, {failed} failed, {rejected} rejected",
             f"memory {memory_level}"]
    for kind, d in engines.items():
        name = d.get("name", "?")
        if d.get("ready"):
            continue
        if d.get("error") is not None:
            parts.append(f"{kind} {name} unavailable: {str(d['error'])[:80]}")
        else:
            parts.append(f"{kind} {name} loading")
    if alerts:
        parts.append("alerts: " + ", ".join(sorted(alerts)))
    return "; ".join(parts)


class Readiness:
    """READY=1 once due, STATUS= when the line changed (or every STATUS_EVERY_S), RELOADING=1 around
    a reload. The parts it reads are handed in at wiring time; the connection is pushed (`attach`)."""

    def __init__(self, notifier: Notifier, *, engines: Any, slot: Any, pipeline: Any, monitor: Any,
                 alerts: Mapping[str, Any], run: Any, stopping: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self._engines, self._slot, self._pipeline, self._monitor = engines, slot, pipeline, monitor
        self._alerts, self._run, self._stopping, self._clock = alerts, run, stopping, clock
        self._t0 = clock()
        self._link: Any = None
        self.ready_sent = False
        self._status_sent: tuple[str, float] = ("", float("-inf"))

    def attach(self, link: Any) -> None:
        self._link = link

    def status_line(self) -> str:
        link = self._link
        phase = ("stopping" if self._stopping.is_set() else "paused" if self._run.paused
                 else "running" if self.ready_sent else "starting")
        return status_line(
            phase=phase, connected=live(link) is not None, mqtt_error=link.last_error if link is not None else None,
            running=self._slot.running, limit=self._slot.limit, done=self._pipeline.done,
            failed=self._pipeline.failed, rejected=self._run.rejected, memory_level=self._monitor.level,
            engines=self._engines.describe(), alerts=list(self._alerts))

    def tick(self) -> None:
        """Once per main-loop tick: READY=1 when due, else STATUS= when it changed."""
        now = self._clock()
        if not self.ready_sent:
            connected = live(self._link) is not None
            engines = self._engines.describe()
            if ready_due(connected, engines, now - self._t0):
                if not (connected and engines_settled(engines)):
                    log.warning("sending READY after %.0f s without %s", now - self._t0,
                                "MQTT" if not connected else "every engine loaded")
                self.ready_sent = True
                line = self.status_line()
                self._notifier.ready(line)
                self._status_sent = (line, now)
            return
        line = self.status_line()
        if line != self._status_sent[0] or now - self._status_sent[1] >= STATUS_EVERY_S:
            self._notifier.status(line)
            self._status_sent = (line, now)

    def reloading(self) -> None:
        """SIGHUP: RELOADING=1 (only once READY=1 was sent); `reloaded()` afterwards."""
        if self.ready_sent:
            self._notifier.reloading()

    def reloaded(self) -> None:
        if self.ready_sent:
            self._notifier.ready(self.status_line())


class Watchdog:
    """The systemd watchdog: pinged while the main loop and MQTT's loop beat.

    Jobs do not take part: a job past jobs.timeout_s is stopped by its own deadline (agent.jobs.runner,
    agent.engines.deadline) and fails with `timeout`. Withholding pings for it would have had systemd
    kill the whole agent, and the file re-run after the restart, over and over.
    """

    def __init__(self, notifier: Notifier, *, tick_s: float, gate: WatchdogGate | None = None) -> None:
        self._notifier = notifier
        self._tick_s = tick_s
        self.gate = gate if gate is not None else WatchdogGate()
        self._link: Any = None
        self._pinger: WatchdogPinger | None = None

    def attach(self, link: Any) -> None:
        self._link = link

    def start(self) -> None:
        self.gate.register("main", max_silence_s=10 * self._tick_s)
        self.gate.register("mqtt", max_silence_s=10 * self._tick_s)
        interval = watchdog_interval()
        self._pinger = WatchdogPinger(self.gate, self._notifier, interval) if interval else None
        if self._pinger:
            self._pinger.start()

    def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.stop()

    def beat(self) -> None:
        """The main thread is alive (and MQTT's network loop, when it is)."""
        self.gate.beat("main")
        link = self._link
        if link is not None and link.loop_alive():
            self.gate.beat("mqtt")
