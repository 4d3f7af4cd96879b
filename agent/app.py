"""Composition root: builds every part from the settings and owns start, reload and stop.

The only place with mutable state that spans parts; everything else receives what it needs.
Data flows source -> admission (a ticket for a job slot) -> runner -> pipeline (transcriber ->
summarizer) -> publisher.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.mqtt.broker import EmbeddedBroker
from agent.config import ConfigError, changed_sections
from agent.config.store import ConfigStore
from agent.mqtt.dispatch import Dispatcher
from agent.mqtt.events import EventSink
from agent.engines.runtime import Engines
from agent.sources.inbox_worker import InboxWorker, spool_settings
from agent.jobs.admission import Admission
from agent.jobs.runner import Runner
from agent.jobs.slot import JobSlot
from agent.audio.vad_cache import VadCache
from agent.mqtt.messages import envelope, utc_now_iso
from agent.ops.monitor import Alert, Monitor
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox
from agent.ops import identity
from agent.ops import alerts as operations
from agent.jobs.pipeline import Pipeline
from agent.mqtt.publisher import Publisher
from agent.settings import InboxSettings, Settings
from agent.ops.telemetry import TelemetryCollector
from agent.ops.systemd import Notifier, WatchdogGate, WatchdogPinger, watchdog_interval
from agent.mqtt.topics import Topics
from agent.sources.inbox import is_candidate_name
from handlers import build_registry
from handlers import config as config_handlers
from handlers import status
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
        self.started_at = utc_now_iso()
        self._t0 = time.monotonic()
        self.paused = False
        self.mic_off = False   # the `listening` command closed the microphone (pause stops all work)
        self.rejected = 0
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock = threading.RLock()
        self.notifier = Notifier()
        self.gate = WatchdogGate()
        s = self.settings
        state_dir = Path(s.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.install_id = identity.install_id(state_dir)
        self.broker = EmbeddedBroker(state_dir, s.mqtt.port) if s.mqtt.host is None else None
        self.outbox = Outbox(state_dir / "outbox.sqlite3", max_messages=s.outbox.max_messages,
                             max_bytes=s.outbox.max_bytes, on_overflow=self._outbox_overflow)
        self.publisher = Publisher(self.outbox, s.device_id, on_store_error=self._store_error)
        # every event goes through the one sink; what reacts to events is registered in _observe_events
        self.events = EventSink(self.publisher, self.topics)
        # kind -> current retained alert body; the board keeps it, its events and retained copies consistent
        self.board = operations.AlertBoard(self.events.emit, self.topics)
        self.alerts: dict[str, dict[str, Any]] = self.board.current
        from agent.mqtt.publisher import RetainedState
        self.state_publisher = RetainedState(lambda: status.state_of(self.services), self._send_state)
        self.slot = JobSlot(s.jobs.max_concurrent)
        self.engines = Engines(s.transcriber, s.summarizer, on_change=self.publish_state)
        self.pipeline = Pipeline(lambda: self.engines, self.events.emit, cache_size=s.jobs.cache_size,
                                 transcribe_concurrency=s.transcriber.concurrency,
                                 summarize_concurrency=s.summarizer.concurrency,
                                 speech_seconds=self._speech_seconds,
                                 summarizer_settings=lambda: self.settings.summarizer,
                                 on_summary=self._on_summary_outcome)
        # every source asks admission, then hands its ticket and audio to the one runner
        self.admission = Admission(self.slot, retry_after_s=s.jobs.retry_after_s)
        self.runner = Runner(self.pipeline, self.watch_job)
        self.link: MqttLink | None = None
        self.inbox = self._make_inbox() if s.inbox.enabled else None
        self.monitor = Monitor(s.memory, self._watched_paths, self._on_alert)
        self.telemetry = TelemetryCollector(self._watched_paths)
        self._init_operations()
        self.listener: Any = None
        self.mic_inbox: InboxWorker | None = None
        self.vad_cache = VadCache(s.vad.cache_size)
        self._build_listening()
        self._build_fleet_and_ha()
        self._observe_events()
        self.services = self._services()
        self.dispatcher = Dispatcher(build_registry(), self.services, admission=self.admission, runner=self.runner,
                                     settings=self.settings, job_event=self.pipeline.job_event)

    # --- building blocks -----------------------------------------------------------------

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.mqtt.topic_prefix, self.settings.device_id)

    def _services(self) -> Services:
        """What MQTT commands may read and do (handlers/), built once: the parts themselves, and
        callables for what this App replaces or changes while running."""
        return Services(
            settings=lambda: self.settings, store=self.store, pipeline=self.pipeline, slot=self.slot,
            engines=self.engines, monitor=self.monitor, telemetry=self.telemetry, outbox=self.outbox,
            publisher=self.publisher, alerts=self.board.current, started_at=self.started_at,
            uptime_s=self.uptime_s, paused=lambda: self.paused, listening=lambda: self.listening,
            has_microphone=lambda: self.listener is not None, rejected=lambda: self.rejected,
            inbox=lambda: self.inbox.inbox if self.inbox is not None else None,
            inbox_name_ok=is_candidate_name, request_counts=lambda: self.dispatcher.stats,
            listen_stats=self.listener_stats, fleet_stats=self.fleet.stats, vad_cache_stats=self.vad_cache_stats,
            apply=self.apply, set_paused=self.set_paused, set_listening=self.set_listening)

    def _make_inbox(self) -> InboxWorker:
        return self._inbox_worker(self.settings.inbox, "inbox")

    def _inbox_worker(self, settings: InboxSettings, kind: str) -> InboxWorker:
        """The one build of an inbox worker: the inbox, or the microphone spool (kind "mic", whose
        files are deleted once processed); both through the same admission and runner."""
        return InboxWorker(settings, self.admission, self.runner, kind=kind, job_event=self.pipeline.job_event,
                           batch_size=self.engines.batch_size, keep_processed=kind != "mic")

    def _make_link(self) -> MqttLink:
        s = self.settings
        if s.mqtt.host is None and self.broker is None:
            # Switched live to `host: null`: start the local broker it means instead of crashing.
            self.broker = EmbeddedBroker(Path(s.state_dir), s.mqtt.port)
            self.broker.start()
        elif s.mqtt.host is not None and self.broker is not None:   # and back to a real broker
            self.broker.stop()
            self.broker = None
        host, port = (s.mqtt.host, s.mqtt.port) if self.broker is None else ("127.0.0.1", self.broker.port)
        link = MqttLink(s.mqtt, self.topics, host=host, port=port, on_connect=self._on_connect,
                        on_publish=self.publisher.on_puback, install_id=self.install_id)
        for topic_filter in self.topics.request_filters:
            link.route(topic_filter, self.dispatcher.on_message)
        return link

    def _attach(self, link: MqttLink) -> None:
        """A new connection (at start, or after an `mqtt` / `device_id` change): pushed to every
        part that publishes on it directly."""
        self.link = link
        self.publisher.attach(link)
        self.board.attach(link)
        self.dispatcher.attach(link)
        self.homeassistant.attach(link)
        self.fleet.attach(link)
        self.last.attach(link)

    def _reconfigure_parts(self, new: Settings) -> None:
        """The settings changed: pushed to the parts that follow them (topic names may have
        changed too: prefix, device id)."""
        topics = self.topics
        self.events.retarget(topics)
        self.board.retarget(topics)
        self.last.retarget(topics)
        self.dispatcher.reconfigure(new)
        self.homeassistant.reconfigure(new.homeassistant, topics)
        self.fleet.reconfigure(new, topics)
        self.engine_health.reconfigure(new.jobs.engine_alert_after)

    def _watched_paths(self) -> list[Path]:
        return [Path(self.settings.state_dir), Path(self.settings.inbox.path)]

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
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
        return 0

    def start(self) -> None:
        if self.broker is not None:
            port = self.broker.start()
            log.info("watch the messages with: mosquitto_sub -h 127.0.0.1 -p %d -t '%s/#' -v",
                     port, self.settings.mqtt.topic_prefix)
        self.publisher.start()
        self.engines.start()
        self._attach(self._make_link())
        self.link.start()
        if self.inbox is not None:
            self.inbox.start()
        self._start_listening()
        self.fleet.start()
        self.monitor.start()
        self.gate.register("main", max_silence_s=10 * TICK_S)
        self.gate.register("mqtt", max_silence_s=10 * TICK_S)
        interval = watchdog_interval()
        self.pinger = WatchdogPinger(self.gate, self.notifier, interval) if interval else None
        if self.pinger:
            self.pinger.start()

    def _main_loop(self) -> None:
        while not self._stop.wait(TICK_S):
            self.gate.beat("main")
            if self.link is not None and self.link.loop_alive():
                self.gate.beat("mqtt")
            self._operations_tick()
            self._check_config(reload=self._reload.is_set())
            self._maybe_telemetry()

    def shutdown(self) -> None:
        """Stop taking work, let running jobs finish (or leave their files claimed for the next
        run), flush the outbox briefly, publish `offline`."""
        self.notifier.stopping()
        log.info("shutting down")
        self._stop.set()
        self.admission.set_stopping()
        self.monitor.stop()
        self._finish_running_jobs()
        self._stop_listening()
        self.fleet.stop(grace_s=self._grace_left())
        self.publisher.stop(flush_s=2)
        if self.link is not None:
            self.link.stop()
        self.dispatcher.close()
        self.outbox.close()   # before the engines: a job abandoned past the grace must store nothing
        self.engines.close()
        if self.pinger is not None:
            self.pinger.stop()
        if self.broker is not None:
            self.broker.stop()

    # --- config --------------------------------------------------------------------------

    def _check_config(self, reload: bool) -> None:
        if reload:
            self._reload.clear()
            if self._ready_sent:
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
        if reload and self._ready_sent:
            self.notifier.ready(self._status_line())

    def apply(self, new: Settings) -> list[str]:
        """Apply a validated config live; returns the components that had to restart."""
        with self._lock:
            old, self.settings = self.settings, new
            self._reconfigure_parts(new)
            sections = set(changed_sections(old, new))
            restarted: list[str] = []
            logging.getLogger().setLevel(new.log_level)
            self.slot.set_limit(0 if self._stop.is_set() else new.jobs.max_concurrent)   # 0: shutting down
            self.outbox.max_messages, self.outbox.max_bytes = new.outbox.max_messages, new.outbox.max_bytes
            self.monitor.reconfigure(new.memory)
            self.admission.reconfigure(new)
            restarted += self.engines.reconfigure(new.transcriber, new.summarizer)
            self.pipeline.set_concurrency(new.transcriber.concurrency, new.summarizer.concurrency)
            if "inbox" in sections and self.inbox is not None:
                self.inbox.stop(grace_s=30)
                self.inbox = None
                restarted.append("inbox")
            if new.inbox.enabled and self.inbox is None:
                self.inbox = self._make_inbox()
                self.inbox.start()
            if sections & {"listen", "vad"}:
                restarted += self._restart_listening()
            if sections & {"mqtt", "device_id"}:
                # The same client id cannot be connected twice: the old link leaves first.
                if self.link is not None:
                    self.link.stop()
                self.publisher.device_id = new.device_id
                self._attach(self._make_link())
                self.link.start()
                restarted.append("mqtt")
            log.info("config %s applied (changed: %s)", self.store.revision, ", ".join(sorted(sections)) or "none")
        self.publish_retained_facts()
        self._sync_fleet_and_ha()
        return restarted

    # --- fleet worker and Home Assistant discovery (agent.sources.fleet, agent.ops.homeassistant) -----

    def _build_fleet_and_ha(self) -> None:
        from agent.sources.fleet import FleetWorker
        from agent.ops.homeassistant import Features, HomeAssistantDiscovery
        from agent.ops.last_values import LastValues
        # retained copies of the latest transcript, summary, speech and telemetry (what HA's sensors read)
        self.last = LastValues(self.topics)
        self.fleet = FleetWorker(settings=self.settings, topics=self.topics, admission=self.admission, runner=self.runner)
        self.homeassistant = HomeAssistantDiscovery(settings=self.settings.homeassistant, topics=self.topics,
                                                    version=__version__, features=lambda: Features(
                                                        microphone=self.settings.listen.enabled or bool(self.listen_source),
                                                        telemetry=self.settings.telemetry.interval_s > 0,
                                                        temperature=self.telemetry.temperature() is not None))

    def _sync_fleet_and_ha(self) -> None:
        """After a config change: join/leave the shared job group, publish/remove discovery."""
        self.fleet.sync()
        self.homeassistant.sync(force=False)

    def _fleet_and_ha_levels_changed(self) -> None:
        """Pause or a memory level changed: `memory_level` in the retained state is what Home
        Assistant shows, and the fleet worker leaves or rejoins its group at once."""
        self.publish_state()
        self.fleet.poke()

    # --- state, events, alerts -----------------------------------------------------------

    def _on_connect(self) -> None:
        self.publisher.wake()
        self.publish_retained_facts()
        self.last.on_connect()
        self.homeassistant.sync()

    def publish_retained_facts(self) -> None:
        link = self.link
        if link is None or not link.connected.is_set():
            return
        device = self.settings.device_id
        link.publish(self.topics.config, envelope(device, config_handlers.config_of(self.services)), retain=True)
        self.publish_state()
        self.board.on_connect()

    def publish_state(self) -> None:
        self.state_publisher.publish()

    def _send_state(self, state: dict[str, Any]) -> bool:
        link = self.link
        if link is None or not link.connected.is_set():
            return False
        link.publish(self.topics.state, envelope(self.settings.device_id, state), retain=True)
        return True

    def _observe_events(self) -> None:
        """What reacts to events, registered once on the one sink (agent.mqtt.events), in order."""
        ev = self.events
        ev.guard(self._hold_abandoned_job)
        ev.observe(None, self.last.observe)   # Home Assistant's `last/*` copies
        # `alerts` in the retained state (Home Assistant's problem sensors)
        ev.observe("alert", lambda _e, _b: self.state_publisher.publish_if_changed())
        ev.observe("job", lambda _e, body: self._observe_engine_health(body))
        ev.observe("job", self._job_state_changed)

    def _job_state_changed(self, _event: str, body: dict[str, Any]) -> None:
        """A job's state in the retained state (running count), and the rejected count."""
        state = body.get("state")
        if state == "running":
            self.state_publisher.publish_if_changed()
        elif state in ("done", "failed"):
            # Built now, the state would still count this job: its thread gives the slot back after.
            self.state_publisher.publish_after(threading.current_thread())
        elif state == "rejected":
            self.rejected += 1

    def raise_alert(self, kind: str, level: str, data: dict[str, Any], *, repeat: bool = False) -> None:
        """An `event/alert` and the retained `alert/<kind>` (see agent.ops.alerts.AlertBoard)."""
        self.board.raise_(kind, level, data, repeat=repeat)

    def clear_alert(self, kind: str, data: dict[str, Any] | None = None) -> None:
        self.board.clear(kind, data)

    def _on_alert(self, alert: Alert) -> None:
        self.admission.set_memory_critical(self.monitor.critical)
        if alert.level == "ok":
            self.clear_alert(alert.kind, self._alert_data(alert))
        else:
            self.raise_alert(alert.kind, alert.level, self._alert_data(alert), repeat=alert.repeat)
            self._maybe_restart_summarizer(alert)
        if self.inbox is not None:
            self.inbox.poke()
        self._poke_listening()
        self._fleet_and_ha_levels_changed()

    def _outbox_overflow(self, dropped: int) -> None:
        """Published directly, never through the outbox that is full (see OutboxWatch)."""
        self.outbox_watch.overflow(dropped)

    def _store_error(self, exc: Exception) -> None:
        self.outbox_watch.store_error(exc)

    @property
    def listening(self) -> bool:
        return self.listener is not None and self.listener.active and not self.paused

    def listener_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.listener.stats() if self.listener is not None else {"state": "off"}
        if self.mic_inbox is not None:
            stats["spool_waiting"] = self.mic_inbox.inbox.waiting_count()
        return stats

    # --- live listening (agent/sources/listener.py) ----------------------------------------------
    # A capture thread turns speech into `event/vad` and WAV segments in the spool folder; a
    # second InboxWorker (kind "mic") takes them through the same job slot and pipeline as inbox
    # files and deletes each once processed. Pause or critical memory closes the microphone.

    def _speech_seconds(self, audio: Any) -> float:
        """Seconds of speech in a job's audio, by the same VAD as live listening; identical
        audio is answered from the VAD cache (keyed by a hash of the whole buffer)."""
        from agent.audio.vad import FrameClassifier  # numpy + webrtcvad: loaded with the first audio

        v = self.settings.vad
        classifier = FrameClassifier(v.aggressiveness, v.frame_ms, v.energy_margin_db, cache=self.vad_cache)
        return sum(classifier.classify_buffer(audio.samples)) * v.frame_ms / 1000

    def vad_cache_stats(self) -> dict[str, int]:
        return self.vad_cache.stats()

    def _spool_dir(self) -> Path:
        s = self.settings
        return Path(s.listen.spool_dir or Path(s.state_dir) / "spool")

    def _listening_wanted(self) -> bool:
        """The microphone is open while work may be taken (admission) and `listening` did not close it."""
        return self.admission.open() and not self.mic_off

    def _build_listening(self) -> None:
        """The listener, and the worker taking its segments (kept while its spool stays the same)."""
        s = self.settings
        spool = self._spool_dir()
        if not (s.listen.enabled or self.listen_source):
            return
        if self.mic_inbox is None or self.mic_inbox.inbox.path != spool:
            self.mic_inbox = self._inbox_worker(spool_settings(s.inbox, spool), "mic")
        from agent.sources.listener import Listener
        self.listener = Listener(s.listen, s.vad, spool, source=self.listen_source, emit=self.events.emit,
                                 wanted=self._listening_wanted, on_change=self.publish_state,
                                 raise_alert=self.raise_alert, clear_alert=self.clear_alert, cache=self.vad_cache)

    def _start_listening(self, start_spool: bool = True) -> None:
        if start_spool and self.mic_inbox is not None:
            self.mic_inbox.start()
        if self.listener is not None:
            self.listener.start()

    def _stop_listening(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.mic_inbox is not None:   # running jobs had their grace in _finish_running_jobs
            self.mic_inbox.stop(grace_s=0)

    def _restart_listening(self) -> list[str]:
        """`listen` or `vad` changed: a new listener; the spool worker only if its folder moved."""
        was_running = self.listener is not None
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        self.vad_cache.max_entries = self.settings.vad.cache_size
        old_spool = self.mic_inbox
        self._build_listening()
        if old_spool is not None and self.mic_inbox is not old_spool:
            old_spool.stop(grace_s=30)
        self._start_listening(start_spool=self.mic_inbox is not old_spool)
        self.publish_state()
        return ["listen"] if was_running or self.listener is not None else []

    def _poke_listening(self) -> None:
        if self.listener is not None:
            self.listener.poke()
        if self.mic_inbox is not None:
            self.mic_inbox.poke()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.admission.set_paused(paused)
        log.info("%s", "paused: no new work is taken" if paused else "resumed")
        if self.inbox is not None:
            self.inbox.poke()
        self._poke_listening()
        self.settle_listening()
        self.publish_state()
        self.fleet.poke()

    def set_listening(self, on: bool) -> None:
        """The microphone alone (`listening`, Home Assistant's switch): inbox, requests and fleet jobs go on."""
        self.mic_off = not on
        log.info("microphone switched %s", "on" if on else "off")
        self._poke_listening()
        self.settle_listening()
        self.publish_state()

    def settle_listening(self, timeout_s: float = 1.5) -> None:
        """Wait (briefly, on the control thread) until the microphone is open or closed as wanted,
        so an answer says what the retained state says a moment later. The capture thread looks
        again after each read: 100 ms from a microphone, up to 1 s from a silent pipe."""
        listener = self.listener
        deadline = time.monotonic() + timeout_s
        while (listener is not None and listener.active != self._listening_wanted()
               and listener.state in ("starting", "listening", "paused") and time.monotonic() < deadline):
            time.sleep(0.02)

    def watch_job(self, job_id: str, jobs: int = 1) -> Any:
        """A job must end within jobs.timeout_s (+ grace), or the systemd watchdog stops being fed.
        A batch of `jobs` files in one engine run gets jobs.timeout_s for each, as whisper's own
        limit does (its timeout x files): else a slow batch would be killed by systemd mid-run."""
        allowance = operations.job_watch_allowance(self.settings.jobs.timeout_s * max(1, jobs))
        return self.gate.watching(f"job-{job_id}", allowance)

    def uptime_s(self) -> float:
        return round(time.monotonic() - self._t0, 1)

    def _status_line(self) -> str:
        link = self.link
        phase = ("stopping" if self._stop.is_set() else "paused" if self.paused
                 else "running" if self._ready_sent else "starting")
        return operations.status_line(
            phase=phase, connected=link is not None and link.connected.is_set(),
            mqtt_error=link.last_error if link is not None else None, running=self.slot.running,
            limit=self.slot.limit, done=self.pipeline.done, failed=self.pipeline.failed, rejected=self.rejected,
            memory_level=self.monitor.level, engines=self.engines.describe(), alerts=list(self.alerts))

    def _maybe_telemetry(self) -> None:
        interval = self.settings.telemetry.interval_s
        now = time.monotonic()
        if interval <= 0 or now - getattr(self, "_last_telemetry", float("-inf")) < interval:
            return
        link = self.link
        if link is not None and link.connected.is_set():
            self._last_telemetry = now
            stats = status.stats_of(self.services)
            link.publish(self.topics.telemetry, envelope(self.settings.device_id, stats), qos=0)
            self.last.telemetry(stats)

    # --- operations (agent/ops/alerts.py): readiness, status, alerts, shutdown -------------

    def _init_operations(self) -> None:
        self.outbox_watch = operations.OutboxWatch(self.board, self.outbox)
        self.engine_health = operations.EngineHealth(self.settings.jobs.engine_alert_after)
        self.pinger: WatchdogPinger | None = None
        self._ready_sent = False
        self._status_sent: tuple[str, float] = ("", float("-inf"))
        self._shutdown_deadline: float | None = None
        self._abandoned = threading.Event()   # set when running jobs outlive the shutdown grace

    def _operations_tick(self) -> None:
        """Once per main-loop tick: READY=1 when due, STATUS= when it changed, outbox alert upkeep.

        READY=1 waits for MQTT and for every engine to settle: loaded, or failed to load (a
        failure is reported in STATUS= and in `state`, and does not hold READY back: retrying
        cannot fix a missing model, and systemd would only kill and restart us in a loop). It is
        sent at the latest READY_DEADLINE_S after start, so a broker that is down at boot does
        not make systemd give up on an agent that works offline (the outbox keeps events).
        """
        now = time.monotonic()
        if not self._ready_sent:
            connected = self.link is not None and self.link.connected.is_set()
            engines = self.engines.describe()
            if operations.ready_due(connected, engines, now - self._t0):
                if not (connected and operations.engines_settled(engines)):
                    log.warning("sending READY after %.0f s without %s", now - self._t0,
                                "MQTT" if not connected else "every engine loaded")
                self._ready_sent = True
                line = self._status_line()
                self.notifier.ready(line)
                self._status_sent = (line, now)
        else:
            line = self._status_line()
            if line != self._status_sent[0] or now - self._status_sent[1] >= operations.STATUS_EVERY_S:
                self.notifier.status(line)
                self._status_sent = (line, now)
        self.outbox_watch.tick()
        self.state_publisher.publish_if_changed()   # e.g. an outbox alert (raised directly, not by emit)

    def _alert_data(self, alert: Alert) -> dict[str, Any]:
        """The monitor's figures, plus swap for memory alerts."""
        data = dict(alert.data)
        sample = self.monitor.last_sample
        if alert.kind == "memory" and sample is not None:
            data.setdefault("swap_used_percent", sample.swap_used_percent)
        return data

    def _maybe_restart_summarizer(self, alert: Alert) -> None:
        """memory.restart_summarizer_when_largest (off by default): while critical (on entering and
        on every reminder), restart the summarizer's server when it is the largest process."""
        slot = self.engines.summarizer
        if operations.summarizer_restart_due(self.settings.memory.restart_summarizer_when_largest, alert.kind,
                                             alert.level, alert.data, slot.server_pid):
            log.warning("memory critical and the summarizer server (pid %s) is the largest process: "
                        "restarting it", slot.server_pid)
            slot.restart()

    def _observe_engine_health(self, body: dict[str, Any]) -> None:
        change = self.engine_health.observe(body)
        if change is None:
            return
        action, data = change
        engines = {kind: d.get("name") for kind, d in self.engines.describe().items()}
        if action == "raise":
            log.error("%d engine failures in a row: raising the engine alert", data["failures"])
            self.raise_alert("engine", "critical", {**data, "engines": engines})
        else:
            self.clear_alert("engine", {**data, "engines": engines})

    def _on_summary_outcome(self, fallback: dict[str, Any] | None) -> None:
        """A job's summary fell back to extractive (raise the `engine` alert, unless one is up
        already: a transcriber alert is not downgraded) or the summarizer answered again (clear
        the alert, if it is the fallback's)."""
        current = self.alerts.get("engine")
        if fallback is not None and current is None:
            self.raise_alert("engine", "warning", {"summary_fallback": fallback})
        elif fallback is None and current is not None and "summary_fallback" in current:
            self.clear_alert("engine", {"summary_fallback": None})

    def _finish_running_jobs(self) -> None:
        """SIGTERM: take no new work, give running jobs jobs.shutdown_grace_s to finish, then abandon
        them: their files stay claimed in .processing/ (taken again on the next start), and nothing
        they do afterwards is stored or published (see _hold_abandoned_job)."""
        grace = self.settings.jobs.shutdown_grace_s
        self._shutdown_deadline = time.monotonic() + grace
        self.slot.set_limit(0)   # requests are answered busy; inbox and spool files wait on disk
        if self.inbox is not None:
            self.inbox.stop(grace_s=0)
        if self.slot.running:
            log.info("waiting up to %g s for %d running job(s)", grace, self.slot.running)
            self.notifier.status(f"stopping: waiting up to {grace:g} s for {self.slot.running} running job(s)")
        while self.slot.running > 0 and self._grace_left() > 0:
            self.gate.beat("main")
            if self.link is not None and self.link.loop_alive():
                self.gate.beat("mqtt")
            time.sleep(0.05)
        if self.slot.running > 0:
            self._abandoned.set()
            log.warning("%d job(s) still running after %g s: their files stay claimed and are taken again "
                        "on the next start", self.slot.running, grace)

    def _grace_left(self) -> float:
        if self._shutdown_deadline is None:
            return 0.0
        return max(0.0, self._shutdown_deadline - time.monotonic())

    def _hold_abandoned_job(self, event: str, body: dict[str, Any]) -> None:
        """A job thread that outlived the shutdown grace stops here for good (the process is exiting):
        its file must stay claimed rather than be finished as failed when the engines are closed.
        Only job threads (daemon threads emitting a job's progress) are held, never the main thread
        or a pool worker that the interpreter joins at exit."""
        thread = threading.current_thread()
        progress = event in ("transcript", "summary") or (
            event == "job" and body.get("state") in ("running", "done", "failed"))
        if self._abandoned.is_set() and progress and thread.daemon and thread is not threading.main_thread():
            log.info("%s: abandoned at shutdown; its work is taken again on the next start",
                     threading.current_thread().name)
            threading.Event().wait()
