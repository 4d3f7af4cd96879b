"""The retained `<root>/health`: ok / degraded / failing, with the reasons, like zigbee2mqtt's
`bridge/health`.

One look gathers what an operator would check first: the current alerts (memory, disk, engine,
outbox, config, capture), whether the engines are ready, the outbox backlog against its bounds,
the memory level, and the broker round trip (the previous health publish to its PUBACK). Each
check that is not ok is a reason `{"check", "status", "detail"}`; the worst decides the status.
A critical alert, an engine that failed to load or an outbox at 90 % of its bounds is
`failing`; a warning, an engine still loading, a backlog past `health.outbox_degraded_percent`
or a slow broker is `degraded`.

Published retained (QoS 1, on the connection itself, not through the outbox: only the latest
value matters) at once when the status or the reasons change, else every `health.interval_s`;
the main loop calls `tick()` every second, which costs a few dictionary lookups.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.mqtt.link import live
from agent.mqtt.messages import envelope
from agent.settings import Settings

RANK = {"ok": 0, "degraded": 1, "failing": 2}
FAILING_OUTBOX_PERCENT = 90.0
_ALERT_STATUS = {"critical": "failing", "error": "failing", "warning": "degraded"}


class Health:
    def __init__(self, settings: Settings, topics: Any, *, alerts: Mapping[str, Mapping[str, Any]],
                 engines: Callable[[], Mapping[str, Mapping[str, Any]]], outbox: Any,
                 monitor: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._alerts, self._engines, self._outbox, self._monitor = alerts, engines, outbox, monitor
        self._settings = settings.health
        self._topics = topics
        self._clock = clock
        self._link: Any = None
        self._lock = threading.Lock()
        self._sent_key: str | None = None
        self._sent_at = float("-inf")
        self._probe: tuple[int, float] | None = None   # (mid, sent at) of the last health publish
        self.rtt_ms: float | None = None

    def reconfigure(self, settings: Settings) -> None:
        self._settings = settings.health

    def attach(self, link: Any) -> None:
        with self._lock:
            self._link, self._sent_key, self._probe = link, None, None   # a new connection: publish at once

    def retarget(self, topics: Any) -> None:
        self._topics = topics

    # --- the checks ----------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        reasons: list[dict[str, Any]] = []
        for kind, body in sorted(list(self._alerts.items())):
            level = str(body.get("level"))
            reasons.append({"check": f"alert:{kind}", "status": _ALERT_STATUS.get(level, "degraded"),
                            "detail": f"{kind} alert: {level}"})
        for role, engine in self._engines().items():
            if engine.get("ready"):
                continue
            failed = bool(engine.get("error"))
            reasons.append({"check": f"engine:{role}", "status": "failing" if failed else "degraded",
                            "detail": f"{role} {engine.get('name')}: "
                                      + (str(engine.get("error"))[:200] if failed else "not ready yet")})
        backlog = self._backlog_percent()
        if backlog >= self._settings.outbox_degraded_percent:
            reasons.append({"check": "outbox", "status": "failing" if backlog >= FAILING_OUTBOX_PERCENT else "degraded",
                            "detail": f"outbox backlog {backlog:.0f} % of its bounds ({self._outbox.count} events)"})
        memory = self._monitor.level
        if memory != "ok":
            reasons.append({"check": "memory", "status": "failing" if memory == "critical" else "degraded",
                            "detail": f"memory level {memory}"})
        slow = self._broker_slow()
        if slow is not None:
            reasons.append({"check": "broker", "status": "degraded", "detail": slow})
        status = max((r["status"] for r in reasons), key=RANK.__getitem__, default="ok")
        return {"status": status, "reasons": reasons, "outbox_backlog_percent": round(backlog, 1),
                "memory_level": memory,
                "broker_rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 1)}

    def _backlog_percent(self) -> float:
        o = self._outbox
        return 100.0 * max(o.count / max(1, o.max_messages), o.size_bytes / max(1, o.max_bytes))

    def _broker_slow(self) -> str | None:
        limit = self._settings.broker_rtt_degraded_ms
        probe = self._probe
        if probe is not None and (self._clock() - probe[1]) * 1000 > limit:
            return f"no PUBACK for the last health publish after {limit:.0f} ms"
        if self.rtt_ms is not None and self.rtt_ms > limit:
            return f"broker round trip {self.rtt_ms:.0f} ms (over {limit:.0f} ms)"
        return None

    # --- publishing ----------------------------------------------------------------------

    def tick(self) -> None:
        """Publish when the status or reasons changed, or when the interval is up."""
        link = live(self._link)
        if link is None:
            return
        body = self.evaluate()
        key = json.dumps([body["status"], body["reasons"]], sort_keys=True)
        now = self._clock()
        with self._lock:
            if key == self._sent_key and now - self._sent_at < self._settings.interval_s:
                return
            info = link.publish(self._topics.health, envelope(self._topics.device_id, body), qos=1, retain=True)
            self._sent_key, self._sent_at = key, now
            if self._probe is None:   # one round trip measured at a time
                self._probe = (info.mid, now)

    def on_puback(self, mid: int) -> None:
        """paho's network thread: the broker acknowledged a publish (maybe our probe)."""
        probe = self._probe
        if probe is not None and probe[0] == mid:
            self.rtt_ms = (self._clock() - probe[1]) * 1000
            self._probe = None
