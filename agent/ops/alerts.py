"""Alerts: the alert board and the outbox alert.

(When READY is due and how long a job may run: agent/ops/readiness.py; when the engine alert
fires and when the summarizer is restarted: agent/ops/reactions.py.)

Alerts: one current alert per kind ("memory", "disk", "engine", "outbox", "config"). Every change
of level is an event on `<root>/event/alert`, and the retained `<root>/alert/<kind>` always holds
the current alert of that kind (an empty retained payload once it is back to ok), so a dashboard
that connects late still sees what is wrong. Critical memory reminders are events too (with
`repeat: true`) and refresh the retained copy.

The outbox alert is special: the outbox is the very thing that is full (or cannot write), so its
alert never goes through the outbox. It is published directly on the connection when there is
one, rate-limited, and otherwise remembered and sent on the next connect. An overflow can thus
never store an event that overflows the outbox again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.mqtt.link import live
from agent.mqtt.messages import envelope

log = logging.getLogger(__name__)

#: Every kind the agent may keep a retained alert for (others may be added by other parts).
ALERT_KINDS = ("memory", "disk", "engine", "outbox", "config", "inbox", "spool")

#: A retained alert of ours found on the broker within this long after the first connect, for a
#: kind that is not currently raised, was left by an earlier run (a crash while critical) and
#: is cleared.
STALE_SWEEP_S = 3.0

#: Outbox alerts are re-published (with the new dropped count) at most this often.
OUTBOX_ALERT_EVERY_S = 30.0


# --- the alert board ----------------------------------------------------------------------------


class AlertBoard:
    """Current alerts, their events and their retained copies, kept consistent under one lock.

    `emit(event, body)` stores an event durably (the outbox); `topics` name where things go (and
    the device id in the envelope). The connection is pushed with `attach(link)`, new topic names
    with `retarget(topics)`. Retained copies are published only while connected; the connect hook
    (`on_connect`) republishes the current state of every kind this run has touched, so a change
    made while offline is never lost on the broker.
    """

    def __init__(self, emit: Callable[[str, dict[str, Any]], None], topics: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._link: Any = None
        self._topics = topics
        self._clock = clock
        self._lock = threading.RLock()
        self.lock = self._lock
        self.current: dict[str, dict[str, Any]] = {}   # kind -> retained body
        self._touched: set[str] = set()               # kinds raised or cleared by this run
        self._pending_events: list[dict[str, Any]] = []   # direct events not yet sent (offline)
        self._last_direct: dict[str, float] = {}
        self._swept = False

    def attach(self, link: Any) -> None:
        """Publish retained copies and direct events on this connection from now on."""
        self._link = link

    def retarget(self, topics: Any) -> None:
        """New topic names (prefix or device id changed)."""
        self._topics = topics

    # -- raising and clearing ----------------------------------------------------------------

    def raise_(self, kind: str, level: str, data: Mapping[str, Any], *, repeat: bool = False,
               direct: bool = False) -> dict[str, Any]:
        """Make `level` the current alert of `kind`: an event, and the retained copy replaced."""
        body = {"kind": kind, "level": level, **data}
        if repeat:
            body["repeat"] = True
        with self._lock:
            self.current[kind] = {k: v for k, v in body.items() if k != "repeat"}
            self._touched.add(kind)
            # The retained copy first: whoever sees the event finds the copy already on the broker.
            self._retain(kind, self.current[kind])
            self._event(body, direct)
        return body

    def clear(self, kind: str, data: Mapping[str, Any] | None = None, *, direct: bool = False) -> bool:
        """Back to ok: an `ok` event (with `data`) and the retained copy emptied. False if nothing was raised."""
        with self._lock:
            if self.current.pop(kind, None) is None:
                return False
            self._touched.add(kind)
            self._retain(kind, None)
            self._event({"kind": kind, "level": "ok", **(data or {})}, direct)
        return True

    def update_direct(self, kind: str, data: Mapping[str, Any]) -> None:
        """Refresh a direct alert's figures; republished at most every OUTBOX_ALERT_EVERY_S."""
        with self._lock:
            body = self.current.get(kind)
            if body is None:
                return
            body.update(data)
            for pending in self._pending_events:   # an event held back while offline goes out up to date
                if pending.get("kind") == kind:
                    pending.update(data)
            now = self._clock()
            if now - self._last_direct.get(kind, float("-inf")) >= OUTBOX_ALERT_EVERY_S:
                self._last_direct[kind] = now
                self._retain(kind, body)

    def level(self, kind: str) -> str:
        with self._lock:
            body = self.current.get(kind)
            return "ok" if body is None else str(body.get("level"))

    # -- connection --------------------------------------------------------------------------

    def on_connect(self) -> None:
        """Republish the retained state of every kind this run touched; send direct events held
        back while offline; on the first connect, sweep retained alerts left by an earlier run."""
        link = self._link
        if link is None:
            return
        with self._lock:
            for kind in sorted(self._touched | set(self.current)):
                self._retain(kind, self.current.get(kind))
            pending, self._pending_events = self._pending_events, []
            for body in pending:
                self._event(body, direct=True)
            sweep = not self._swept
            self._swept = True
        if sweep:
            self._sweep_stale(link)

    def _sweep_stale(self, link: Any) -> None:
        topic_filter = self._topics.alert("+")
        deadline = self._clock() + STALE_SWEEP_S

        def on_message(msg: Any) -> None:
            if not msg.retain or not msg.payload or self._clock() > deadline:
                return   # live messages are our own publications
            kind = msg.topic.rsplit("/", 1)[-1]
            with self._lock:
                if kind in self.current:
                    return
                log.info("clearing the retained %s alert left by an earlier run", kind)
                self._touched.add(kind)
                self._retain(kind, None)

        try:
            link.route(topic_filter, on_message)
        except Exception as exc:  # noqa: BLE001 - a failed sweep must not break the connect
            log.debug("stale alert sweep failed: %s", exc)
            return
        timer = threading.Timer(STALE_SWEEP_S, lambda: _quietly(link.unroute, topic_filter))
        timer.daemon = True
        timer.start()

    # -- internals ---------------------------------------------------------------------------

    def _event(self, body: dict[str, Any], direct: bool) -> None:
        if not direct:
            self._emit("alert", body)
            return
        link = live(self._link)
        if link is None:
            # Only the latest body of a kind is worth sending once we are back.
            kind = body.get("kind")
            self._pending_events = [b for b in self._pending_events if b.get("kind") != kind] + [body]
            return
        _quietly(link.publish, self._topics.event("alert"), envelope(self._topics.device_id, body), qos=1)

    def _retain(self, kind: str, body: dict[str, Any] | None) -> None:
        link = live(self._link)
        if link is None:
            return   # republished by on_connect
        payload = b"" if body is None else envelope(self._topics.device_id, body)
        _quietly(link.publish, self._topics.alert(kind), payload, retain=True)


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - publishing an alert must never fail its caller
        log.debug("%s failed: %s", getattr(fn, "__name__", fn), exc)
        return None


class OutboxWatch:
    """Turns outbox overflow and store errors into the `outbox` alert, without using the outbox.

    overflow(): the oldest events were dropped -> warning (the dropped count is refreshed, at
    most every OUTBOX_ALERT_EVERY_S). store_error(): an event could not be stored at all ->
    critical. tick(): cleared once the outbox is back under half its bounds and storing works.
    """

    def __init__(self, board: AlertBoard, outbox: Any) -> None:
        self.board = board
        self.outbox = outbox
        # The board's own lock: overflow() runs inside it (an alert event overflowing the outbox),
        # so a lock of our own would invite a lock-order deadlock with tick().
        self._lock = board.lock
        self._stored_at_error: int | None = None

    def overflow(self, dropped: int) -> None:
        data = {"dropped": self.outbox.dropped, "queued": self.outbox.count,
                "max_messages": self.outbox.max_messages, "max_bytes": self.outbox.max_bytes}
        with self._lock:
            if self.board.level("outbox") == "ok":
                log.warning("outbox full: dropping the oldest events (%d so far)", self.outbox.dropped)
                self.board.raise_("outbox", "warning", data, direct=True)
            else:
                self.board.update_direct("outbox", data)

    def store_error(self, exc: Exception) -> None:
        with self._lock:
            self._stored_at_error = self.outbox.stored
            if self.board.level("outbox") != "critical":
                log.error("cannot store events: %s", exc)
                self.board.raise_("outbox", "critical", {"message": str(exc), "dropped": self.outbox.dropped},
                                  direct=True)

    def tick(self) -> None:
        with self._lock:
            level = self.board.level("outbox")
            if level == "ok":
                return
            if level == "critical" and (self._stored_at_error is None or self.outbox.stored <= self._stored_at_error):
                return   # nothing stored since the error: still failing
            if self.outbox.count <= self.outbox.max_messages // 2 and self.outbox.size_bytes <= self.outbox.max_bytes // 2:
                self._stored_at_error = None
                self.board.clear("outbox", {"dropped": self.outbox.dropped, "queued": self.outbox.count},
                                 direct=True)
