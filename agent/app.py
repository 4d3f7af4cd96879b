"""Composition root: builds every part from the settings and owns start, reload and stop.

The only place with mutable state that spans parts; everything else receives what it needs.
Data flows source -> job slot -> pipeline (transcriber -> summarizer) -> publisher.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent import __version__
from agent.broker import EmbeddedBroker
from agent.config import ConfigError, changed_sections, settings_to_dict
from agent.config_store import ConfigStore
from agent.dispatch import Dispatcher
from agent.engines.runtime import Engines
from agent.inbox_worker import InboxWorker
from agent.jobs import JobSlot
from agent.messages import utc_now_iso
from agent.monitor import Alert, Monitor
from agent.mqtt import MqttLink
from agent.outbox import Outbox
from agent.pipeline import Pipeline
from agent.publisher import Publisher
from agent.settings import Settings
from agent.telemetry import TelemetryCollector
from agent.systemd import Notifier, WatchdogGate, WatchdogPinger, watchdog_interval
from agent.topics import Topics
from handlers import build_registry

log = logging.getLogger(__name__)

TICK_S = 1.0


class App:
    def __init__(self, store: ConfigStore, listen_source: dict[str, Any] | None = None) -> None:
        self.store = store
        self.listen_source = listen_source
        self.settings: Settings = store.settings
        self.started_at = utc_now_iso()
        self._t0 = time.monotonic()
        self.paused = False
        self.alerts: dict[str, dict[str, Any]] = {}   # kind -> current retained alert body
        self.rejected = 0
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock = threading.RLock()
        self.notifier = Notifier()
        self.gate = WatchdogGate()
        s = self.settings
        state_dir = Path(s.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(state_dir, s.mqtt.port) if s.mqtt.host is None else None
        self.outbox = Outbox(state_dir / "outbox.sqlite3", max_messages=s.outbox.max_messages,
                             max_bytes=s.outbox.max_bytes, on_overflow=self._outbox_overflow)
        self.publisher = Publisher(self.outbox, s.device_id, on_store_error=self._store_error)
        self.slot = JobSlot(s.jobs.max_concurrent)
        self.engines = Engines(s.transcriber, s.summarizer, on_change=self.publish_state)
        self.pipeline = Pipeline(lambda: self.engines, self.emit, cache_size=s.jobs.cache_size)
        from agent.control import Control   # the handlers' view of this app
        self.control = Control(self)
        self.link: MqttLink | None = None
        self.dispatcher = Dispatcher(build_registry(), self.control, self.slot, settings=lambda: self.settings,
                                     link=lambda: self.link, memory_critical=self.memory_critical,
                                     job_event=self.pipeline.job_event, watch=self.watch_job)
        self.inbox = self._make_inbox() if s.inbox.enabled else None
        self.monitor = Monitor(s.memory, self._watched_paths, self._on_alert)
        self.telemetry = TelemetryCollector(self._watched_paths)
        self.listener: Any = None

    # --- building blocks -----------------------------------------------------------------

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.mqtt.topic_prefix, self.settings.device_id)

    def _make_inbox(self) -> InboxWorker:
        return InboxWorker(self.settings.inbox, self.slot, self.pipeline, may_take=self.may_take_work,
                           job_event=self.pipeline.job_event, watch=self.watch_job)

    def _make_link(self) -> MqttLink:
        s = self.settings
        host, port = (s.mqtt.host, s.mqtt.port) if self.broker is None else ("127.0.0.1", self.broker.port)
        link = MqttLink(s.mqtt, self.topics, host=host, port=port, on_connect=self._on_connect,
                        on_publish=self.publisher.on_puback)
        for topic_filter in self.topics.request_filters:
            link.route(topic_filter, self.dispatcher.on_message)
        return link

    def _watched_paths(self) -> list[Path]:
        return [Path(self.settings.state_dir), Path(self.settings.inbox.path)]

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        try:
            self._main_loop()
        finally:
            self.shutdown()
        return 0

    def start(self) -> None:
        if self.broker is not None:
            port = self.broker.start()
            log.info("watch the messages with: mosquitto_sub -h 127.0.0.1 -p %d -t '%s/#' -v",
                     port, self.settings.mqtt.topic_prefix)
        self.publisher.start()
        self.engines.start()
        self.link = self._make_link()
        self.publisher.attach(self.link)
        self.link.start()
        if self.inbox is not None:
            self.inbox.start()
        self.monitor.start()
        self.gate.register("main", max_silence_s=10 * TICK_S)
        self.gate.register("mqtt", max_silence_s=10 * TICK_S)
        interval = watchdog_interval()
        self.pinger = WatchdogPinger(self.gate, self.notifier, interval) if interval else None
        if self.pinger:
            self.pinger.start()

    def _main_loop(self) -> None:
        ready_sent = False
        while not self._stop.wait(TICK_S):
            self.gate.beat("main")
            if self.link is not None and self.link.loop_alive():
                self.gate.beat("mqtt")
            if not ready_sent and self.link is not None and self.link.connected.is_set():
                self.notifier.ready(self._status_line())
                ready_sent = True
            self._check_config(reload=self._reload.is_set())
            self._maybe_telemetry()

    def shutdown(self) -> None:
        """Stop taking work, let running jobs finish (or leave their files claimed for the next
        run), flush the outbox briefly, publish `offline`."""
        self.notifier.stopping()
        log.info("shutting down")
        self._stop.set()
        self.monitor.stop()
        if self.inbox is not None:
            self.inbox.stop(grace_s=10)
        self.publisher.stop(flush_s=2)
        if self.link is not None:
            self.link.stop()
        self.dispatcher.close()
        self.engines.close()
        self.outbox.close()
        if self.broker is not None:
            self.broker.stop()

    # --- config --------------------------------------------------------------------------

    def _check_config(self, reload: bool) -> None:
        if reload:
            self._reload.clear()
            self.notifier.reloading()
        try:
            new = self.store.check()
        except ConfigError as exc:
            log.error("config file change refused; the old config keeps running:\n%s", exc)
            self.raise_alert("config", "error", {"errors": [str(p) for p in exc.problems]})
            new = None
        if new is not None:
            self.clear_alert("config")
            self.apply(new)
        if reload:
            self.notifier.ready(self._status_line())

    def apply(self, new: Settings) -> list[str]:
        """Apply a validated config live; returns the components that had to restart."""
        with self._lock:
            old, self.settings = self.settings, new
            sections = set(changed_sections(old, new))
            restarted: list[str] = []
            logging.getLogger().setLevel(new.log_level)
            self.slot.set_limit(new.jobs.max_concurrent)
            self.outbox.max_messages, self.outbox.max_bytes = new.outbox.max_messages, new.outbox.max_bytes
            self.monitor.reconfigure(new.memory)
            restarted += self.engines.reconfigure(new.transcriber, new.summarizer)
            if "inbox" in sections and self.inbox is not None:
                self.inbox.stop(grace_s=30)
                self.inbox = None
                restarted.append("inbox")
            if new.inbox.enabled and self.inbox is None:
                self.inbox = self._make_inbox()
                self.inbox.start()
            if sections & {"mqtt", "device_id"}:
                # The same client id cannot be connected twice: the old link leaves first.
                if self.link is not None:
                    self.link.stop()
                self.link = self._make_link()
                self.publisher.device_id = new.device_id
                self.publisher.attach(self.link)
                self.link.start()
                restarted.append("mqtt")
            log.info("config %s applied (changed: %s)", self.store.revision, ", ".join(sorted(sections)) or "none")
        self.publish_retained_facts()
        return restarted

    # --- state, events, alerts -----------------------------------------------------------

    def _on_connect(self) -> None:
        self.publisher.wake()
        self.publish_retained_facts()

    def publish_retained_facts(self) -> None:
        link = self.link
        if link is None or not link.connected.is_set():
            return
        from agent.messages import envelope
        device = self.settings.device_id
        link.publish(self.topics.config, envelope(device, self.control.config_get()), retain=True)
        self.publish_state()
        for kind, body in list(self.alerts.items()):
            link.publish(self.topics.alert(kind), envelope(device, body), retain=True)

    def publish_state(self) -> None:
        link = self.link
        if link is not None and link.connected.is_set():
            from agent.messages import envelope
            link.publish(self.topics.state, envelope(self.settings.device_id, self.control.state()), retain=True)

    def emit(self, event: str, body: dict[str, Any]) -> None:
        self.publisher.emit(self.topics.event(event), body)
        if event == "job" and body.get("state") in ("running", "done", "failed"):
            self.publish_state()
        if event == "job" and body.get("state") == "rejected":
            self.rejected += 1

    def raise_alert(self, kind: str, level: str, data: dict[str, Any]) -> None:
        body = {"kind": kind, "level": level, **data}
        self.alerts[kind] = body
        self.emit("alert", body)
        if self.link is not None:
            from agent.messages import envelope
            self.link.publish(self.topics.alert(kind), envelope(self.settings.device_id, body), retain=True)

    def clear_alert(self, kind: str) -> None:
        if self.alerts.pop(kind, None) is None:
            return
        self.emit("alert", {"kind": kind, "level": "ok"})
        if self.link is not None:
            self.link.publish(self.topics.alert(kind), b"", retain=True)

    def _on_alert(self, alert: Alert) -> None:
        if alert.level == "ok":
            self.clear_alert(alert.kind)
        else:
            self.raise_alert(alert.kind, alert.level, alert.data)
        if self.inbox is not None:
            self.inbox.poke()

    def _outbox_overflow(self, dropped: int) -> None:
        log.warning("outbox full: dropped the %d oldest event(s)", dropped)
        self.alerts["outbox"] = {"kind": "outbox", "level": "warning", "dropped": self.outbox.dropped}

    def _store_error(self, exc: Exception) -> None:
        log.error("cannot store an event: %s", exc)
        if "outbox" not in self.alerts or self.alerts["outbox"].get("level") != "critical":
            self.alerts["outbox"] = {"kind": "outbox", "level": "critical", "message": str(exc)}
            self.publish_retained_facts()

    @property
    def listening(self) -> bool:
        return self.listener is not None and not self.paused

    def listener_stats(self) -> dict[str, Any]:
        return self.listener.stats() if self.listener is not None else {}

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        log.info("%s", "paused: no new work is taken" if paused else "resumed")
        if self.inbox is not None:
            self.inbox.poke()
        self.publish_state()

    def watch_job(self, job_id: str) -> Any:
        """A job must end within jobs.timeout_s (+ grace), or the systemd watchdog stops being fed."""
        return self.gate.watching(f"job-{job_id}", self.settings.jobs.timeout_s + 30)

    def memory_critical(self) -> bool:
        return self.monitor.critical

    def may_take_work(self) -> bool:
        return not self.paused and not self.monitor.critical and not self._stop.is_set()

    def uptime_s(self) -> float:
        return round(time.monotonic() - self._t0, 1)

    def _status_line(self) -> str:
        return (f"online; {self.slot.running}/{self.slot.limit} jobs; "
                f"{self.pipeline.done} done, {self.pipeline.failed} failed")

    def _maybe_telemetry(self) -> None:
        interval = self.settings.telemetry.interval_s
        now = time.monotonic()
        if interval <= 0 or now - getattr(self, "_last_telemetry", 0.0) < interval:
            return
        self._last_telemetry = now
        link = self.link
        if link is not None and link.connected.is_set():
            from agent.messages import envelope
            link.publish(self.topics.telemetry, envelope(self.settings.device_id, self.control.stats()), qos=0)
        self.notifier.status(self._status_line())
