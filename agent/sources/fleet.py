"""Shared transcription jobs spread over a fleet: a work queue on an MQTT shared subscription.

With `fleet.worker: true` the agent stays subscribed to
`$share/<fleet.group>/<topic_prefix>/jobs/transcribe` (it leaves only when switched off or
stopping). A job is one JSON object::

    {"job_id": "j-17", "audio_b64": "<WAV/FLAC/... bytes>", "reply_to": "voice/results/ctl",
     "summarize": true, "transaction": "optional, echoed"}

with exactly one of `audio_b64` or `url` (see agent/sources/fleet_fetch.py: only hosts in
`fleet.url_allow`). `reply_to` may be left out on MQTT 5 when the message carries a Response
Topic; Correlation Data is echoed either way. `reply_to` must lie below `<topic_prefix>/results/`
(agent.mqtt.topics.Topics.reply_allowed). Answers go to `reply_to` (QoS 1)::

    {"job_id", "status": "accepted", "agent_job_id", "device_id", "ts"}    it started here
    {"job_id", "status": "ok", "text", "language", "audio_s", "summary", "engines",
     "timings_ms", "agent_job_id", "device_id", "ts"}                     the result
    {"job_id", "status": "error", "error": {"code", "message", ...}, "device_id", "ts"}

A job published once (QoS 1) gets exactly one final answer, whoever else subscribes to the topic
and however many arrive at once; the sender never resends. Why this holds on Mosquitto:

* Mosquitto hands each message of a shared subscription to the next member in turn, whether that
  member is busy or not (`subs__shared_process`: no look at its inflight window or its session).
  MQTT 5 Receive Maximum only makes the broker queue the surplus in that member's own session,
  never pass it to another member, and a clean session drops that queue on a disconnect. So a
  worker cannot refuse a job (the old `busy` answer) and flow control cannot spread the load:
  the worker takes every job it is handed and decides itself.
* Every job handed to the worker is first written to its spool (agent/sources/fleet_spool.py, under
  state_dir, fsynced): from then on a crash or stop does not lose it; the next start runs it.
* A job starts at once when a slot is free. Otherwise up to `jobs.max_concurrent` jobs (one per
  slot) wait here; every further one goes back to the group: published again, unchanged, to
  the jobs topic while this device is still subscribed (so the broker always has a shared
  subscriber to give it to, even if every other worker left), and removed from the spool only
  once the broker acknowledged it. A job never waits here behind more than one job per slot
  while another worker could take it. A job handed back and forth while every worker is full is
  held a little longer at each return (HOLD_S, doubling, at most HOLD_MAX_S) before it goes
  back again. Paused or under critical memory a device starts nothing and keeps nothing
  waiting: it hands every job back the same way.
* With no worker subscribed at all the broker answers the sender's publish with MQTT 5 PUBACK
  reason 16 "no matching subscribers". When some other client also matches the topic (a monitor
  on `#`) the broker acknowledges the publish as delivered and drops it for the group: MQTT has no
  way to tell, so keep at least one worker subscribed.

A job id seen again while this device holds it is not held twice; one seen after it finished
gets the stored result again (the last RESULTS_KEPT results). Error codes beside the pipeline's
(`corrupt`, `too_long`, `engine_error`, ...): `bad_request`, `payload_too_large`, `forbidden`,
`reply_topic_forbidden`, `fetch_failed`, `internal` (also for a job that was running when the device stopped twice).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import AgentError
from agent.sources.fleet_fetch import fetch
from agent.sources.fleet_jobs import FleetJob, Refused, Unanswerable, parse_job
from agent.sources.fleet_spool import FleetSpool, Held
from agent.jobs.admission import Admission, Refusal, Ticket
from agent.jobs.runner import Result, Runner
from agent.jobs.slot import new_job_id
from agent.jobs.lru import LRUCache
from agent.mqtt.messages import envelope
from agent.jobs.loading import decode_b64, load_bytes
from agent.jobs.pipeline import Job, Loaded, Source
from agent.jobs.results import answer_fields
from agent.settings import Settings
from agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

RESULTS_KEPT = 64     # finished results kept to answer a resent job id without a second run
HOLD_S = 0.25         # a job seen here again waits this long (doubling) before it goes back
HOLD_MAX_S = 2.0
FORWARD_ACK_S = 10.0  # a hand-back the broker did not acknowledge within this stays here


class FleetWorker:
    def __init__(self, *, settings: Settings, topics: Topics, admission: Admission, runner: Runner) -> None:
        # pushed by the app when they change: reconfigure(), attach()
        self._settings, self._topics, self._link = settings, topics, None
        self._admission, self._runner = admission, runner
        self._lock = threading.RLock()
        self._routed: tuple[Any, str] | None = None     # (link, filter) subscribed now
        self._draining: tuple[Any, str] | None = None   # unsubscribed, late deliveries still spooled
        self._spool = FleetSpool(Path(settings.state_dir) / "fleet")
        self._running: dict[str, threading.Thread] = {}
        self._results = LRUCache(RESULTS_KEPT)
        self._seen = LRUCache(1024)                      # job id -> times handed to this device
        self._intake = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-intake")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="fleet", daemon=True)
        admission.on_change(self.poke)
        self.taken = self.refused = self.done = self.failed = self.forwarded = 0

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if len(self._spool):
            log.info("fleet: %d shared job(s) from the last run are waiting", len(self._spool))
        self._thread.start()
        self.sync()

    def stop(self, grace_s: float = 10.0) -> None:
        """Leave the group; give running jobs `grace_s`. Waiting jobs stay spooled for the next start."""
        self._stop.set()
        self._wake.set()
        self.sync()
        deadline = time.monotonic() + grace_s
        with self._lock:
            running = list(self._running.values())
        for thread in running:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._intake.shutdown(wait=True)   # what arrived is written to the spool, not dropped

    def poke(self) -> None:
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {"subscribed": self._routed is not None, "taken": self.taken, "done": self.done,
                "failed": self.failed, "refused": self.refused, "held": len(self._spool),
                "forwarded": self.forwarded}

    # --- the subscription and the queue --------------------------------------------------

    def reconfigure(self, settings: Settings, topics: Topics) -> None:
        """New settings or topic names; sync() (un)subscribes to match."""
        with self._lock:
            self._settings, self._topics = settings, topics

    def attach(self, link: Any) -> None:
        """The connection to take and answer jobs on from now on; sync() moves the subscription."""
        with self._lock:
            self._link = link

    def sync(self) -> None:
        """Subscribed while `fleet.worker` is on and the device is not stopping. Idempotent."""
        with self._lock:
            link = self._link
            topic_filter = self._topics.shared_jobs(self._settings.fleet.group)
            on = link is not None and self._settings.fleet.worker and not self._stop.is_set()
            wanted = (link, topic_filter) if on else None
            if self._routed == wanted:
                return
            if self._routed is not None:
                old_link, old_filter = self._routed
                same = old_link is link and old_filter == topic_filter
                old_link.unroute(old_filter, drain=same)   # late deliveries are still spooled
                self._routed, self._draining = None, (old_link, old_filter) if same else None
                log.info("fleet: left %s", old_filter)
            if self._draining is not None and self._draining != (link, topic_filter):
                self._draining[0].unroute(self._draining[1])
                self._draining = None
            if wanted is not None:
                link.route(topic_filter, self.on_message)
                self._routed, self._draining = wanted, None
                log.info("fleet: joined %s", topic_filter)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                wait = self._dispatch()
            except Exception:
                log.exception("fleet: queue update failed")
                wait = 1.0
            self._wake.wait(wait)
            self._wake.clear()

    def _dispatch(self) -> float:
        """Start what can start, keep one waiting job per slot, hand the rest back to the group.
        Returns how long until a held job is due to go back."""
        can_start = not self._stop.is_set()
        waiting = self._spool.waiting()
        while waiting and can_start:
            admitted = self._admission.try_admit()
            if isinstance(admitted, Refusal):
                can_start = admitted.code == "busy"   # paused, memory, stopping: keep nothing waiting
                break
            self._start(waiting.pop(0), admitted)
        keep = self._admission.limit if can_start else 0
        now, due = time.monotonic(), 1.0
        for held in waiting[keep:]:
            if held.attempt or self._routed is None:
                continue   # interrupted jobs run here; without a subscription nothing can go back
            if held.hold_until > now:
                due = min(due, held.hold_until - now)
            elif not self._stop.is_set():
                self._forward(held)
        return max(0.01, due)

    def _forward(self, held: Held) -> None:
        """Publish the job again to the group; drop it here once the broker has it."""
        try:
            payload, response_topic, correlation = self._spool.read(held)
        except (OSError, ValueError) as exc:
            log.error("fleet: spooled job %s is unreadable (%s); dropped", held.job_id, exc)
            self._spool.drop(held)
            return
        # detached first: a copy the broker hands straight back is a new job here
        if self._hand_back(payload, response_topic, correlation, lambda: self._spool.detach(held)):
            self._spool.drop(held)
            log.debug("fleet: job %s handed back to the group", held.job_id)
        else:
            held.hold_until = time.monotonic() + HOLD_MAX_S
            self._spool.attach(held)

    def _hand_back(self, payload: bytes, response_topic: str | None, correlation: bytes | None,
                   before: Callable[[], None] = lambda: None) -> bool:
        """Publish a job again to the group while this device is still in it; True once the broker has it."""
        props = _props(correlation, response_topic) or Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("voice-agent-handed-back-by", self._topics.device_id)
        try:
            with self._lock:   # still subscribed when the broker routes it (sync() takes this lock)
                link = self._link
                if self._routed is None or self._routed[0] is not link or not link.connected.is_set():
                    return False
                before()
                info = link.publish(f"{self._topics.prefix}/jobs/transcribe", payload, qos=1, properties=props)
            info.wait_for_publish(timeout=FORWARD_ACK_S)
            ok = info.is_published() and link.puback_failure(info.mid) is None
        except (RuntimeError, ValueError) as exc:
            log.warning("fleet: a job could not go back to the group (%s)", exc)
            ok = False
        self.forwarded += ok
        return ok

    # --- jobs ----------------------------------------------------------------------------

    def on_message(self, msg: Any) -> None:
        """paho's network thread: hand over at once (after stop(), spool it right here)."""
        args = (bytes(msg.payload), getattr(msg, "properties", None))
        try:
            self._intake.submit(self._take, *args)
        except RuntimeError:
            self._take(*args)

    def _take(self, payload: bytes, props: Any) -> None:
        try:
            self._take_one(payload, props)
        except Exception:
            log.exception("fleet: a shared job could not be handled")

    def _take_one(self, payload: bytes, props: Any) -> None:
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        job = self._parse(payload, response_topic, correlation)
        if job is None:
            return
        if self._spool.holds(job.job_id) is not None:
            log.info("fleet: job %s is held here already; not taken twice", job.job_id)
            return
        cached = self._results.get(job.job_id)
        if cached is not None:
            log.info("fleet: job %s was done here already; its result is sent again", job.job_id)
            self._reply(job, cached)
            return
        seen = self._seen.get(job.job_id) or 0
        self._seen.put(job.job_id, seen + 1)
        hold = min(HOLD_MAX_S, HOLD_S * 2 ** (seen - 1)) if seen else 0.0
        try:
            self._spool.add(job.job_id, payload, response_topic, correlation, time.monotonic() + hold)
        except OSError as exc:   # disk full or read-only: the group may take it, else say so
            log.error("fleet: job %s cannot be spooled: %s", job.job_id, exc)
            if not self._hand_back(payload, response_topic, correlation):
                self._reply(job, {"status": "error", "error": AgentError(
                    "the device cannot store the job (disk); it was not run", code="storage_error").as_dict()})
        self.poke()

    def _parse(self, payload: bytes, response_topic: str | None, correlation: bytes | None) -> FleetJob | None:
        s = self._settings
        try:
            return parse_job(payload, response_topic, correlation, max_bytes=s.mqtt.max_payload_bytes,
                             url_allow=s.fleet.url_allow, reply_allowed=self._topics.reply_allowed)
        except Unanswerable as exc:
            log.warning("fleet: dropped a job that names no reply topic: %s", exc)
        except Refused as exc:
            self.refused += 1
            log.info("fleet: job %s refused: %s", exc.job_id, exc.error.message)
            self._send(exc.reply_to, exc.job_id, {"status": "error", "error": exc.error.as_dict()},
                       exc.transaction, exc.correlation)
        return None

    def _start(self, held: Held, ticket: Ticket) -> None:
        """Holding a slot: run the job in its own thread (or answer why it cannot run)."""
        try:
            payload, response_topic, correlation = self._spool.read(held)
            job = self._parse(payload, response_topic, correlation)   # settings may have changed
            if job is not None and held.attempt >= 2:
                self.failed += 1
                self._reply(job, {"status": "error", "error": AgentError(
                    "the device stopped twice while running this job; it is not run again").as_dict()})
                job = None
            if job is None:
                self._spool.drop(held)
                ticket.release()
                return
            self._spool.start(held)
        except Exception:
            log.exception("fleet: spooled job %s could not start; dropped", held.job_id)
            self._spool.drop(held)
            ticket.release()
            return
        self.taken += 1
        agent_job_id = new_job_id()
        thread = threading.Thread(target=self._run, args=(ticket, job, held, agent_job_id),
                                  name=f"fleet-{job.job_id[:32]}", daemon=True)
        with self._lock:
            self._running[job.job_id] = thread
        self._reply(job, {"status": "accepted", "agent_job_id": agent_job_id})
        thread.start()

    def _run(self, ticket: Ticket, job: FleetJob, held: Held, agent_job_id: str) -> None:
        work = Job(agent_job_id, Source("fleet", job.job_id), lambda: self._load(job), summarize=job.summarize)
        self._runner.run(ticket, [work], catch_all=True,
                         finish=lambda results: self._finish(job, held, agent_job_id, results[0]))

    def _finish(self, job: FleetJob, held: Held, agent_job_id: str, record: Result) -> None:
        """Still holding the slot: remember the result, answer the sender, drop the spooled job."""
        try:
            if isinstance(record, AgentError):
                result: dict[str, Any] = {"status": "error", "error": record.as_dict(), "agent_job_id": agent_job_id}
                self.failed += 1
            else:
                result = {"status": "ok", **answer_fields(record), "agent_job_id": agent_job_id}
                self.done += 1
            self._results.put(job.job_id, result)
            self._reply(job, result)
            self._spool.drop(held)
        finally:
            with self._lock:
                self._running.pop(job.job_id, None)

    def _load(self, job: FleetJob) -> Loaded:
        s = self._settings
        if job.audio_b64 is not None:
            data = decode_b64(job.audio_b64)
        else:
            assert job.url is not None
            data = fetch(job.url, allow=s.fleet.url_allow, max_bytes=s.mqtt.max_payload_bytes,
                         timeout_s=s.fleet.fetch_timeout_s)
        return load_bytes(data, s.inbox)

    def _reply(self, job: FleetJob, body: dict[str, Any]) -> None:
        self._send(job.reply_to, job.job_id, body, job.transaction, job.correlation)

    def _send(self, reply_to: str, job_id: str | None, body: dict[str, Any], transaction: str | None,
              correlation: bytes | None) -> None:
        link = self._link
        if link is None:
            log.warning("fleet: no broker link; the answer to job %s is lost", job_id)
            return
        answer = {"job_id": job_id, **body}
        if transaction is not None:
            answer["transaction"] = transaction
        link.publish(reply_to, envelope(self._topics.device_id, answer), qos=1,
                     properties=_props(correlation))


def _props(correlation: bytes | None, response_topic: str | None = None) -> Properties | None:
    if correlation is None and response_topic is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    if response_topic is not None:
        props.ResponseTopic = response_topic
    return props
