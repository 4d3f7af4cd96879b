"""Composition root: builds every part from the settings and owns start, reload and stop.

Data flows source -> admission (a ticket for a job slot) -> runner -> pipeline (transcriber ->
summarizer) -> event sink -> publisher. The App wires the parts, pushes new settings and a new
connection to them (`reconfigure`, `attach`), and starts, applies and stops; what they decide
lives in them (docs/architecture.md says where).
"""

from __future__ import annotations

import logging
import signal
import threading
from functools import partial
from pathlib import Path
from typing import Any

from agent import __version__
from agent.audio.speech_meter import SpeechMeter
from agent.audio.vad_cache import VadCache
from agent.config import ConfigError, changed_sections
from agent.config.store import ConfigStore
from agent.engines.runtime import Engines
from agent.jobs.admission import Admission
from agent.jobs.pipeline import Pipeline
from agent.jobs.retry import Retries, RetryPolicy
from agent.jobs.run_state import RunState
from agent.jobs.runner import Runner
from agent.jobs.shutdown import ShutdownGrace
from agent.jobs.slot import JobSlot
from agent.mqtt.connection import Connections
from agent.mqtt.dispatch import Dispatcher, DispatchStats
from agent.mqtt.events import EventSink
from agent.mqtt.link import MqttLink
from agent.mqtt.offload import FleetOffload
from agent.mqtt.outbox_open import open_outbox
from agent.mqtt.publisher import Publisher
from agent.mqtt.retained import RetainedFacts
from agent.mqtt.topics import Topics
from agent.ops import identity
from agent.ops.alerts import AlertBoard, OutboxWatch
from agent.ops.health import Health
from agent.ops.log_events import LogLines
from agent.ops.memory_guard import MemoryGuard
from agent.ops.monitor import Alert, Monitor
from agent.ops.oom_watch import OomWatch
from agent.ops.reactions import AlertReactions
from agent.ops.readiness import Readiness, Watchdog
from agent.ops.restart import RESTART_EXIT, RestartGate
from agent.ops.systemd import Notifier
from agent.ops.telemetry import TelemetryCollector, TelemetryTimer
from agent.settings import Settings
from agent.sources.inbox_feed import InboxFeed, WorkerFactory
from agent.sources.listening import Listening
from agent.sources.run_control import RunControl
from agent.timestamps import utc_iso
from handlers import build_registry
from handlers.status import stats_of
from handlers.base import Services

log = logging.getLogger(__name__)

TICK_S = 1.0
#: Exit code of a refused start that a restart cannot fix (sysexits EX_CONFIG; the unit's
#: RestartPreventExitStatus=78 stops systemd from retrying it).
EX_CONFIG = 78


class App:
    def __init__(self, store: ConfigStore, listen_source: dict[str, Any] | None = None) -> None:
        self.store = store
        self.listen_source = listen_source
        self.settings: Settings = store.settings
        self.run_state = RunState(utc_iso())
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock = threading.RLock()
        self.notifier = Notifier()
        s = self.settings
        state_dir = Path(s.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.install_id = identity.install_id(state_dir)
        self.restart_gate = RestartGate(state_dir)
        self._restart_requested = False
        self._log_level_override: str | None = None   # request/log_level without persist
        # WARNING+ log lines on event/log (QoS 0, never stored, secrets redacted)
        self.log_lines = LogLines(s, self.topics)
        logging.getLogger().addHandler(self.log_lines)
        self.link: MqttLink | None = None
        self.outbox, quarantined = open_outbox(state_dir / "outbox.sqlite3", max_messages=s.outbox.max_messages,
                                               max_bytes=s.outbox.max_bytes, on_overflow=self._outbox_overflow)
        self.publisher = Publisher(self.outbox, s.device_id, on_store_error=self._store_error)
        # every event goes through the one sink; what reacts to events is registered in _observe_events
        self.events = EventSink(self.publisher, self.topics)
        # kind -> current retained alert body; the board keeps it, its events and retained copies consistent
        self.board = AlertBoard(self.events.emit, self.topics)
        self.outbox_watch = OutboxWatch(self.board, self.outbox)
        if quarantined is not None:   # stored in the fresh outbox: sent once connected
            self.board.raise_("outbox", "critical", quarantined.alert())
        self.slot = JobSlot(s.jobs.max_concurrent)
        # `transcriber.engine: fleet` reaches the workers through this (agent/mqtt/offload.py)
        self.offload = FleetOffload(self.topics, s.transcriber.engine == "fleet")
        self.engines = Engines(s.transcriber, s.summarizer, on_change=self.publish_state, offload=self.offload)
        self.reactions = AlertReactions(self.board, self.engines, s)
        self.vad_cache = VadCache(s.vad.cache_size)
        self.speech = SpeechMeter(s.vad, self.vad_cache)
        self.pipeline = Pipeline(self.engines, self.events.emit, cache_size=s.jobs.cache_size,
                                 transcribe_concurrency=s.transcriber.concurrency,
                                 summarize_concurrency=s.summarizer.concurrency,
                                 speech_seconds=self.speech.seconds,
                                 summarizer_settings=s.summarizer, emit_ephemeral=self.events.emit_ephemeral,
                                 progress_interval_s=s.jobs.progress_interval_s,
                                 on_summary=self.reactions.on_summary)
        # every source asks admission, then hands its ticket and audio to the one runner
        self.admission = Admission(self.slot, retry_after_s=s.jobs.retry_after_s)
        # the engine's peak need against the free budget before a job; OOM kills said at once
        self.memory_guard = MemoryGuard(self.board, s)
        self.admission.set_need_check(self.memory_guard.check)
        self.oom_watch = OomWatch(self.memory_guard.on_oom)
        self.retries = Retries(RetryPolicy.of(s))   # failed files that stay queued for another try
        self.watchdog = Watchdog(self.notifier, tick_s=TICK_S)
        self.runner = Runner(self.pipeline, s.jobs.timeout_s)
        self.grace = ShutdownGrace(self.slot, s.jobs.shutdown_grace_s, beat=self.watchdog.beat,
                                   say=self.notifier.status)
        make_worker = WorkerFactory(self.admission, self.runner, self.pipeline.job_event, self.engines.batch_size,
                                    self.retries, on_folders=self._on_inbox_folders)
        self.inbox = InboxFeed(s.inbox, make_worker)
        # Home Assistant Assist over Wyoming (off by default; the package is imported only when on)
        from agent.sources.wyoming_service import WyomingService
        self.wyoming = WyomingService(s, admission=self.admission, runner=self.runner, emit=self.events.emit,
                                      microphone=self._has_microphone(s), version=__version__)
        self.listening = Listening(s, source=listen_source, run=self.run_state, admission=self.admission,
                                   make_worker=make_worker, emit=self.events.emit, on_change=self.publish_state,
                                   board=self.board, cache=self.vad_cache, divert=self.wyoming.offer)
        self.monitor = Monitor(s.memory, self._watched_paths, self._on_alert)
        self.telemetry = TelemetryCollector(self._watched_paths)
        # imported here: `import agent.app` stays cheap (the fleet worker loads requests)
        from agent.ops.homeassistant import HomeAssistantDiscovery
        from agent.ops.last_values import LastValues
        from agent.sources.fleet import FleetWorker
        # retained copies of the latest transcript, summary, speech and telemetry (what HA's sensors read)
        self.last = LastValues(self.topics)
        self.fleet = FleetWorker(settings=s, topics=self.topics, admission=self.admission, runner=self.runner)
        self.homeassistant = HomeAssistantDiscovery(settings=s.homeassistant, topics=self.topics, version=__version__,
                                                    features=self._features(s), thermometer=self.telemetry.temperature)
        self.control = RunControl(self.run_state, self.admission, inbox=self.inbox, listening=self.listening,
                                  fleet=self.fleet, on_change=self.publish_state)
        self.requests = DispatchStats()
        self.services = Services(
            store=store, pipeline=self.pipeline, slot=self.slot, engines=self.engines, monitor=self.monitor,
            telemetry=self.telemetry, outbox=self.outbox, publisher=self.publisher, alerts=self.board.current,
            run=self.run_state, microphone=self.listening, inbox=self.inbox,
            requests=self.requests, fleet_stats=self.fleet.stats, vad_cache_stats=self.vad_cache.stats,
            apply=self.apply, set_paused=self.control.set_paused, set_listening=self.control.set_listening,
            restart_wait_s=self.restart_gate.wait_s, restart=self._restart, set_log_level=self._set_log_level)
        self.dispatcher = Dispatcher(build_registry(), self.services, admission=self.admission, runner=self.runner,
                                     settings=s, job_event=self.pipeline.job_event, stats=self.requests)
        self.health = Health(s, self.topics, alerts=self.board.current, engines=self.engines.describe,
                             outbox=self.outbox, monitor=self.monitor)
        self.connections = Connections(s, self.install_id, on_connect=self._on_connect,
                                       on_publish=self._on_puback, on_request=self.dispatcher.on_message)
        self.retained = RetainedFacts(self.services, self.topics)
        self.readiness = Readiness(self.notifier, engines=self.engines, slot=self.slot, pipeline=self.pipeline,
                                   monitor=self.monitor, alerts=self.board.current, run=self.run_state,
                                   stopping=self._stop)
        self.telemetry_timer = TelemetryTimer(partial(stats_of, self.services), self.last.telemetry,
                                              interval_s=s.telemetry.interval_s, topics=self.topics)
        self._observe_events()

    # --- wiring --------------------------------------------------------------------------

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.mqtt.topic_prefix, self.settings.device_id)

    def _has_microphone(self, s: Settings) -> bool:
        return s.listen.enabled or bool(self.listen_source)

    def _features(self, s: Settings) -> Any:
        """What the device has for Home Assistant (the thermometer is asked on each sync)."""
        from agent.ops.homeassistant import Features
        return Features(microphone=self._has_microphone(s), telemetry=s.telemetry.interval_s > 0,
                        wake_models=s.listen.wake_word.names)

    def _watched_paths(self) -> list[Path]:
        return [Path(self.settings.state_dir), Path(self.settings.inbox.path)]

    def _observe_events(self) -> None:
        """What reacts to events, registered once on the one sink (agent.mqtt.events), in order."""
        ev = self.events
        ev.guard(self.grace.hold)   # a job abandoned at shutdown stores nothing more
        ev.observe(None, self.last.observe)   # Home Assistant's `last/*` copies
        # `alerts` in the retained state (Home Assistant's problem sensors)
        ev.observe("alert", self.retained.observe)
        ev.observe("job", self.reactions.observe_job)
        ev.observe("job", self.retained.observe)   # the running count
        ev.observe("job", self.run_state.observe_job)   # the rejected count
        ev.observe("job", self.memory_guard.observe_job)   # a job done clears an OOM-kill alert

    def _attach(self, link: MqttLink) -> None:
        """A new connection (at start, or after an `mqtt` / `device_id` change): pushed to every
        part that publishes on it or watches it."""
        self.link = link
        for part in (self.publisher, self.board, self.dispatcher, self.retained, self.homeassistant, self.fleet,
                     self.last, self.readiness, self.watchdog, self.telemetry_timer, self.health, self.log_lines,
                     self.offload):
            part.attach(link)

    def _reconfigure_parts(self, new: Settings) -> None:
        """The settings changed: pushed to the parts that follow them (topic names may have
        changed too: prefix, device id)."""
        topics = self.topics
        self.events.retarget(topics)
        self.board.retarget(topics)
        self.last.retarget(topics)
        self.retained.retarget(topics)
        for part in (self.health, self.log_lines):
            part.retarget(topics)
            part.reconfigure(new)
        self.dispatcher.reconfigure(new)
        self.homeassistant.reconfigure(new.homeassistant, topics, self._features(new))
        self.fleet.reconfigure(new, topics)
        self.offload.reconfigure(new, topics)
        self.telemetry_timer.reconfigure(new, topics)
        self.speech.reconfigure(new.vad)
        for part in (self.reactions, self.runner, self.grace, self.memory_guard, self.retries):
            part.reconfigure(new)

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        s = self.settings
        log.info("device_id %s (topic root %s)", s.device_id, self.topics.root)
        if s.mqtt.host is not None:   # the embedded broker is ours alone: nobody else to collide with
            try:
                identity.check_unique(s.mqtt, self.topics, s.mqtt.host, s.mqtt.port, self.install_id)
            except identity.DuplicateDeviceError as exc:
                log.error("%s", exc.message)
                return EX_CONFIG
        self.start()
        try:
            self._main_loop()
        finally:
            self.shutdown()
        # requested over MQTT: systemd starts us again on this code, elsewhere __main__ re-executes
        return RESTART_EXIT if self._restart_requested else 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """SIGHUP: reload the config (on the main loop's next tick); SIGTERM, SIGINT: stop."""
        (self._reload if signum == signal.SIGHUP else self._stop).set()

    def start(self) -> None:
        self.connections.start(self.settings.mqtt.topic_prefix)
        self.publisher.start()
        self.engines.start()
        self._attach(self.connections.make(self.settings, self.topics))
        self.link.start()
        self.inbox.start()
        self.listening.start()
        self.wyoming.start()
        self.fleet.start()
        self.monitor.start()
        self.oom_watch.start()
        self.watchdog.start()

    def _main_loop(self) -> None:
        while not self._stop.wait(TICK_S):
            self.watchdog.beat()
            self.readiness.tick()
            self.outbox_watch.tick()
            self.retained.state.publish_if_changed()   # e.g. an outbox alert (raised directly, not by emit)
            self.health.tick()
            self._check_config(reload=self._reload.is_set())
            self.telemetry_timer.tick()

    def shutdown(self) -> None:
        """Stop taking work, let running jobs finish (or leave their files claimed for the next
        run, agent/jobs/shutdown.py), flush the outbox briefly, publish `offline`."""
        self.notifier.stopping()
        log.info("shutting down")
        self._stop.set()
        self.admission.set_stopping()
        self.monitor.stop()
        self.wyoming.stop()   # Home Assistant sees the connections end now, not at a timeout
        self.oom_watch.stop()
        self.grace.begin()   # requests are answered busy; inbox and spool files wait on disk
        self.inbox.stop(grace_s=0)
        self.grace.wait()
        self.listening.stop()
        self.fleet.stop(grace_s=self.grace.left())
        self.publisher.stop(flush_s=2)
        if self.link is not None:
            self.link.stop()
        self.dispatcher.close()
        self.outbox.close()   # before the engines: a job abandoned past the grace must store nothing
        self.engines.close()
        self.watchdog.stop()
        self.connections.stop()
        logging.getLogger().removeHandler(self.log_lines)
        self.log_lines.close()

    # --- config --------------------------------------------------------------------------

    def _check_config(self, reload: bool) -> None:
        if reload:
            self._reload.clear()
            self.readiness.reloading()
        try:
            new = self.store.check()
        except ConfigError as exc:
            log.error("config file change refused; the old config keeps running:\n%s", exc)
            self.board.raise_("config", "error", {"errors": [str(p) for p in exc.problems]})
            new = None
        if new is not None:
            self.board.clear("config")
            self.apply(new)
        if reload:
            self.readiness.reloaded()

    def apply(self, new: Settings) -> list[str]:
        """Apply a validated config live; returns the components that had to restart."""
        with self._lock:
            old, self.settings = self.settings, new
            self._reconfigure_parts(new)
            sections = set(changed_sections(old, new))
            restarted: list[str] = []
            if new.log_level != old.log_level:
                self._log_level_override = None   # the config's own change wins over request/log_level
            logging.getLogger().setLevel(self._log_level_override or new.log_level)
            self.slot.set_limit(0 if self._stop.is_set() else new.jobs.max_concurrent)   # 0: shutting down
            self.outbox.max_messages, self.outbox.max_bytes = new.outbox.max_messages, new.outbox.max_bytes
            self.monitor.reconfigure(new.memory)
            self.admission.reconfigure(new)
            restarted += self.engines.reconfigure(new.transcriber, new.summarizer)
            self.pipeline.reconfigure(new)   # stage bounds, summarizer settings, progress interval
            restarted += self.inbox.reconfigure(new.inbox, changed="inbox" in sections)
            if sections & {"listen", "vad"}:
                restarted += self.listening.restart(new)
            restarted += self.wyoming.reconfigure(new, self._has_microphone(new))
            if sections & {"mqtt", "device_id"}:
                # The same client id cannot be connected twice: the old link leaves first.
                if self.link is not None:
                    self.link.stop()
                self.publisher.device_id = new.device_id
                self._attach(self.connections.make(new, self.topics))
                self.link.start()
                restarted.append("mqtt")
            log.info("config %s applied (changed: %s)", self.store.revision, ", ".join(sorted(sections)) or "none")
        self.publish_retained_facts()
        self.fleet.sync()   # join or leave the shared job group
        self.homeassistant.sync(force=False)   # publish or remove discovery
        return restarted

    # --- retained facts, events, alerts --------------------------------------------------

    def _restart(self) -> None:
        """request/restart (or config/set with restart: true), after its answer went out: stop as on
        SIGTERM, then come back (agent/ops/restart.py)."""
        self.restart_gate.take()
        log.warning("restart requested over MQTT: stopping, then starting again")
        self._restart_requested = True
        self._stop.set()

    def _set_log_level(self, level: str) -> None:
        with self._lock:
            self._log_level_override = level
            logging.getLogger().setLevel(level)
        log.warning("log level set to %s over MQTT", level)

    def _on_puback(self, mid: int) -> None:
        self.publisher.on_puback(mid)
        self.health.on_puback(mid)

    def _on_connect(self) -> None:
        self.publisher.wake()
        self.publish_retained_facts()
        self.last.on_connect()
        self.homeassistant.sync()

    def publish_retained_facts(self) -> None:
        if self.retained.publish():
            self.board.on_connect()

    def publish_state(self) -> None:
        self.retained.state.publish()

    def _on_alert(self, alert: Alert) -> None:
        """The monitor's memory and disk alerts: admission first, then the board, then every
        source looks again (pause or a memory level changed)."""
        self.admission.set_memory_critical(self.monitor.critical)
        self.reactions.on_monitor_alert(alert, self.monitor.last_sample)
        self.control.look_again()

    def _on_inbox_folders(self, kind: str, problem: str | None) -> None:
        """An inbox (or the spool) whose own folders are not the agent's stays stopped: an alert."""
        alert = "inbox" if kind == "inbox" else "spool"
        if problem is None:
            self.board.clear(alert)
        else:
            self.board.raise_(alert, "critical", {"source": kind, "error": problem})

    def _outbox_overflow(self, dropped: int) -> None:
        """Published directly, never through the outbox that is full (see OutboxWatch)."""
        self.outbox_watch.overflow(dropped)

    def _store_error(self, exc: Exception) -> None:
        self.outbox_watch.store_error(exc)
