"""Moves events from the durable outbox to the broker, in order, each once per connection.

Rows are published with QoS 1 only while connected; a row is deleted when its PUBACK arrives.
paho itself re-sends its in-flight messages after a reconnect, so a row that was handed to paho
is never handed over again by this process: that is what keeps a broker outage free of
duplicates. After a crash the new process publishes every row still stored (at-least-once).

The retained `state` does not go through the outbox (only its latest value matters); see
`RetainedState`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from agent.mqtt.messages import envelope
from agent.mqtt.link import MqttLink, live
from agent.mqtt.outbox import Outbox

log = logging.getLogger(__name__)

WINDOW = 100  # rows handed to paho and not yet acknowledged


class Publisher:
    """Only the publisher thread touches the in-flight map; paho's callback just queues the mid.

    paho calls `on_publish` while holding its own message lock, so the callback must never wait
    for a lock that is held around `client.publish()`.
    """

    def __init__(self, outbox: Outbox, device_id: str, on_store_error: Callable[[Exception], None]) -> None:
        self.outbox = outbox
        self.device_id = device_id
        self._on_store_error = on_store_error
        self._link: MqttLink | None = None
        self._wake = threading.Event()
        self._done_mids: deque[int] = deque()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def attach(self, link: MqttLink) -> None:
        """Send through this connection from now on (a new one after a config change)."""
        self._link = link
        self.wake()

    def emit(self, topic: str, body: dict, *, durable: bool = True) -> None:
        """Store an event (`durable`: fsynced, with every event before it; see Outbox.put), then
        wake the sender."""
        try:
            self.outbox.put(topic, envelope(self.device_id, body), durable=durable)
        except Exception as exc:  # disk full, I/O error: the caller's work is not undone
            self._on_store_error(exc)
            return
        self.wake()

    def send_now(self, topic: str, body: dict) -> bool:
        """Publish at QoS 0 straight to the link, bypassing the outbox; False when not connected
        (the message is dropped: only for messages a later one supersedes)."""
        link = live(self._link)
        if link is None:
            return False
        try:
            link.publish(topic, envelope(self.device_id, body), qos=0)
        except Exception:   # an ephemeral message is not worth failing its caller
            log.debug("ephemeral publish on %s failed", topic, exc_info=True)
            return False
        return True

    def wake(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _wake_later(self, delay_s: float = 1.0) -> None:
        """Retry after a storage error without spinning."""
        timer = threading.Timer(delay_s, self._wake.set)
        timer.daemon = True
        timer.start()

    def on_puback(self, mid: int) -> None:
        self._done_mids.append(mid)
        self._wake.set()

    def stop(self, flush_s: float = 0.0) -> None:
        """Give stored events up to `flush_s` to leave, then stop."""
        if flush_s > 0:
            self._idle.wait(flush_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        inflight: dict[int, int] = {}   # paho mid -> outbox row id
        unacked: list[int] = []         # rows the broker acknowledged, still to delete
        last_sent = 0
        link: MqttLink | None = None
        while not self._stop.is_set():
            self._wake.wait(timeout=5)
            self._wake.clear()
            if self._link is not link:   # a new connection object: start from the oldest stored row
                link, inflight, last_sent = self._link, {}, 0
            while self._done_mids:
                row = inflight.pop(self._done_mids.popleft(), None)
                if row is not None:
                    unacked.append(row)
            if unacked:
                try:
                    deleted = self.outbox.ack(unacked)
                except Exception:   # the sender must outlive any storage trouble
                    log.exception("outbox: deleting acknowledged events failed")
                    deleted = False
                if deleted:
                    self.published += len(unacked)
                    unacked = []
                else:   # kept, deleted on a later round (the broker has them: no re-send)
                    self._wake_later()
            if link is None or not link.connected.is_set():
                continue
            room = WINDOW - len(inflight)
            try:
                rows = self.outbox.pending(last_sent, room) if room > 0 else []
            except Exception:
                log.exception("outbox: reading stored events failed")
                self._wake_later()
                continue
            for row in rows:
                info = link.publish(row.topic, row.payload, qos=1)
                # Even when the connection just dropped, paho keeps a QoS 1 message and re-sends it.
                inflight[info.mid] = row.id
                last_sent = row.id
            if len(rows) == room and room > 0:
                self._wake.set()   # more may be waiting
            if not inflight and self.outbox.count == 0:
                self._idle.set()


#: How long after a job's thread ended its `state` waits: when the next job starts meanwhile
#: (a queue of files), nothing changed and nothing is published.
STATE_SETTLE_S = 0.05


#: Fields of the state that change without making it worth republishing: the uptime and a running
#: job's elapsed time (else it would be sent every tick), and which job is running (jobs that follow
#: each other without a gap would each send one; the counts and a long job's progress fraction
#: still do). `request/state` always answers the current values.
VOLATILE = ("uptime_s", "elapsed_s", "job_id", "started_at", "source")


class RetainedState:
    """Publishes the retained `state`: now, when it changed, or once a job's thread has ended.

    A job emits `done` (or `failed`) before its thread gives its job slot back, so a state built
    then still counts the job as running; the state that shows the agent idle again only exists
    once that thread has ended. Building, comparing and sending happen under one lock, so the
    last state sent is also the last one built: a job starting on another thread cannot be
    overtaken by an older `running: 0`. Fields in `volatile` (see VOLATILE), at any depth, do
    not count as a change.
    """

    def __init__(self, build: Callable[[], dict[str, Any]], send: Callable[[dict[str, Any]], bool], *,
                 volatile: tuple[str, ...] = VOLATILE,
                 settle_s: float = STATE_SETTLE_S) -> None:
        """`send` returns False when nothing was sent (not connected): the next call sends then."""
        self._build = build
        self._send = send
        self._volatile = volatile
        self._settle_s = settle_s
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._ending: list[threading.Thread] = []
        self._waiter: threading.Thread | None = None

    def publish(self) -> None:
        """Send the state now, changed or not (a (re)connection, config applied, pause...)."""
        self._publish(force=True)

    def publish_if_changed(self) -> None:
        self._publish(force=False)

    def publish_after(self, thread: threading.Thread) -> None:
        """Send the state, if it changed, once `thread` (a job's own thread) has ended."""
        if thread is threading.main_thread() or not thread.daemon:
            self.publish_if_changed()   # not a job thread: it will not end soon
            return
        with self._cond:
            self._ending.append(thread)
            if self._waiter is None:
                self._waiter = threading.Thread(target=self._wait_for_ends, name="state", daemon=True)
                self._waiter.start()
            self._cond.notify()

    def _publish(self, *, force: bool) -> None:
        with self._lock:
            state = self._build()
            key = _without(state, self._volatile)
            if (force or key != self._last) and self._send(state):
                self._last = key

    def _wait_for_ends(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._ending))
                ending, self._ending = self._ending, []
            alive = [t for t in ending if not _ended(t)]
            time.sleep(self._settle_s)
            try:
                self.publish_if_changed()
            except Exception:   # the waiter must outlive a failed publish
                log.exception("state: publishing failed")
            if alive:   # still finishing (a slow disk): wait again, without holding up the others
                with self._cond:
                    self._ending[:0] = alive


def _without(value: Any, volatile: tuple[str, ...]) -> Any:
    """`value` with the `volatile` keys left out of every dict in it, however deep."""
    if isinstance(value, dict):
        return {k: _without(v, volatile) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [_without(v, volatile) for v in value]
    return value


def _ended(thread: threading.Thread, timeout_s: float = 1.0) -> bool:
    thread.join(timeout_s)
    return not thread.is_alive()
