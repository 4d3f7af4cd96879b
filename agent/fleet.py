"""Shared transcription jobs spread over a fleet by an MQTT shared subscription.

With `fleet.worker: true` the agent subscribes to `$share/<fleet.group>/<topic_prefix>/jobs/transcribe`
while it has a free job slot (and is neither paused, under memory pressure nor stopping), and
UNSUBSCRIBES as soon as its slots are taken, so the broker hands the next job to a device that
can start it at once. It subscribes again when a slot frees, whoever held it (the inbox, a
request or a shared job): the job slot, pause, memory levels and config changes all wake it.

A job is one JSON object::

    {"job_id": "j-17", "audio_b64": "<WAV/FLAC/... bytes>", "reply_to": "ctl/results",
     "summarize": true, "transaction": "optional, echoed"}

with exactly one of `audio_b64` or `url` (http/https only; the download is bounded by
`mqtt.max_payload_bytes` and `fleet.fetch_timeout_s`). `reply_to` may be left out on MQTT 5 when
the message carries a Response Topic; Correlation Data is echoed either way. It runs under the job
slot through the same pipeline as every other job, with source `{"kind": "fleet", "name":
<job_id>}`, so `event/job`, `event/transcript` and `event/summary` look as for any other source.
Answers go to `reply_to` (QoS 1, in this order)::

    {"job_id", "status": "accepted", "agent_job_id", "device_id", "ts"}     the job took a slot here
    {"job_id", "status": "ok", "text", "language", "audio_s", "summary", "engines",
     "timings_ms", "agent_job_id", "device_id", "ts"}                      the result
    {"job_id", "status": "error", "error": {"code", "message", ...}, "device_id", "ts"}

A job that arrives while the device cannot start it (the broker delivered it before the
UNSUBSCRIBE took effect) is NOT held in memory: it is answered at once with error code `busy`
(or `memory_pressure`) and `retry_after_s`, and nothing of it was done. This keeps the rule the
job slot lives by: work that finds no slot is refused, never queued in memory.

What the sender does (each job is then run once): resend after `busy` / `memory_pressure`;
resend when the QoS 1 PUBACK says *no matching subscribers* (MQTT 5 reason code 16: every
worker was busy and the broker dropped the job); and resend when neither `accepted` nor any
other answer came within a few seconds, because the broker also drops a job silently (PUBACK
success) when every worker is busy but some other client subscribes to the topic, e.g. a
monitor on `#`. Once `accepted` arrived, wait for the result. `transaction` (echoed) can tell
one attempt's answers from another's. A job id seen again while it runs on this device is
answered `accepted` and not started twice; one seen again after it finished gets the stored
result again (the last `RESULTS_KEPT` results), not a second run.

Error codes beside the pipeline's (`corrupt`, `too_long`, `engine_error`, ...): `bad_request`,
`payload_too_large`, `fetch_failed`, `busy`, `memory_pressure`, `internal`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, ContextManager
from urllib.parse import urlsplit

import requests
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import AgentError, RequestError
from agent.jobs import JobSlot, new_job_id
from agent.lru import LRUCache
from agent.messages import envelope
from agent.pipeline import Loaded, Pipeline, Source
from agent.settings import Settings
from agent.topics import Topics

log = logging.getLogger(__name__)

RESULTS_KEPT = 64     # finished results kept to answer a resent job id without a second run
MAX_JOB_ID = 200
FIELDS = {"job_id", "audio_b64", "url", "reply_to", "summarize", "transaction"}


@dataclass(frozen=True)
class FleetJob:
    job_id: str
    reply_to: str
    audio_b64: str | None
    url: str | None
    summarize: bool
    transaction: str | None
    correlation: bytes | None


class FleetWorker:
    def __init__(self, *, settings: Callable[[], Settings], topics: Callable[[], Topics],
                 link: Callable[[], Any], slot: JobSlot, pipeline: Pipeline,
                 may_take: Callable[[], bool], memory_critical: Callable[[], bool],
                 watch: Callable[[str], ContextManager[None]]) -> None:
        self._settings = settings
        self._topics = topics
        self._link = link
        self._slot = slot
        self._pipeline = pipeline
        self._may_take = may_take
        self._memory_critical = memory_critical
        self._watch = watch
        self._lock = threading.RLock()
        self._routed: tuple[Any, str] | None = None     # (link, filter) subscribed now
        self._draining: tuple[Any, str] | None = None   # unsubscribed, late deliveries still handled
        self._running: dict[str, threading.Thread] = {}  # sender's job id -> its thread
        self._results = LRUCache(RESULTS_KEPT)
        self._intake = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-intake")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="fleet", daemon=True)
        slot.on_change(self.poke)
        self.taken = 0
        self.refused = 0
        self.done = 0
        self.failed = 0

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self.sync()

    def stop(self, grace_s: float = 10.0) -> None:
        """Leave the group, then give running shared jobs `grace_s` to finish and answer."""
        self._stop.set()
        self._wake.set()
        self.sync()
        deadline = time.monotonic() + grace_s
        with self._lock:
            running = list(self._running.values())
        for thread in running:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._intake.shutdown(wait=False, cancel_futures=True)

    def poke(self) -> None:
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {"subscribed": self._routed is not None, "taken": self.taken, "done": self.done,
                "failed": self.failed, "refused": self.refused}

    # --- the subscription follows the free slots -----------------------------------------

    def _wanted(self) -> bool:
        s = self._settings()
        return (s.fleet.worker and not self._stop.is_set() and self._may_take()
                and self._slot.running < self._slot.limit)

    def sync(self) -> None:
        """Subscribe while a job could start now, unsubscribe otherwise. Idempotent."""
        with self._lock:
            link = self._link()
            topic_filter = self._topics().shared_jobs(self._settings().fleet.group)
            wanted = (link, topic_filter) if link is not None and self._wanted() else None
            if self._routed == wanted:
                return
            if self._routed is not None:
                old_link, old_filter = self._routed
                # Same link: keep answering what the broker already sent (busy); else drop it.
                same = old_link is link and old_filter == topic_filter
                old_link.unroute(old_filter, drain=same)
                self._routed = None
                if same:
                    self._draining = (old_link, old_filter)
                log.debug("fleet: left %s", old_filter)
            if self._draining is not None and self._draining != (link, topic_filter):
                old_link, old_filter = self._draining
                old_link.unroute(old_filter)
                self._draining = None
            if wanted is not None:
                link.route(topic_filter, self.on_message)
                self._routed, self._draining = wanted, None
                log.debug("fleet: joined %s", topic_filter)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            try:
                self.sync()
            except Exception:
                log.exception("fleet: subscription update failed")

    # --- jobs ----------------------------------------------------------------------------

    def on_message(self, msg: Any) -> None:
        """paho's network thread: hand over at once."""
        try:
            self._intake.submit(self._take, bytes(msg.payload), getattr(msg, "properties", None))
        except RuntimeError:   # shutting down: the job was not started; the sender resends
            pass

    def _take(self, payload: bytes, props: Any) -> None:
        try:
            self._take_one(payload, props)
        except Exception:
            log.exception("fleet: a shared job could not be handled")

    def _take_one(self, payload: bytes, props: Any) -> None:
        try:
            job = self._parse(payload, props)
        except _Unanswerable as exc:
            log.warning("fleet: dropped a job that names no reply topic: %s", exc)
            return
        except _Refused as exc:
            self.refused += 1
            log.info("fleet: job %s refused: %s", exc.job_id, exc.error.message)
            self._reply(exc.reply_to, exc.job_id, {"status": "error", "error": exc.error.as_dict()},
                        exc.transaction, exc.correlation)
            return
        with self._lock:
            running = job.job_id in self._running
        if running:
            log.info("fleet: job %s is already running here; not started twice", job.job_id)
            self._reply(job.reply_to, job.job_id, {"status": "accepted"}, job.transaction, job.correlation)
            return
        cached = self._results.get(job.job_id)
        if cached is not None:
            log.info("fleet: job %s was done here already; its result is sent again", job.job_id)
            self._reply(job.reply_to, job.job_id, cached, job.transaction, job.correlation)
            return
        error = self._cannot_start()
        if error is not None:
            self.refused += 1
            log.debug("fleet: job %s answered %s", job.job_id, error.code)
            self._reply(job.reply_to, job.job_id, {"status": "error", "error": error.as_dict()},
                        job.transaction, job.correlation)
            self.sync()
            return
        self.taken += 1
        agent_job_id = new_job_id()
        log.debug("fleet: job %s taken as %s", job.job_id, agent_job_id)
        thread = threading.Thread(target=self._run, args=(job, agent_job_id), name=f"fleet-{job.job_id[:32]}",
                                  daemon=True)
        with self._lock:
            self._running[job.job_id] = thread
        # Before the job can answer: the sender stops waiting to resend once it has this.
        self._reply(job.reply_to, job.job_id, {"status": "accepted", "agent_job_id": agent_job_id},
                    job.transaction, job.correlation)
        thread.start()
        self.sync()   # slots full now: leave the group before the broker picks this device again

    def _cannot_start(self) -> AgentError | None:
        """None after taking a slot; else why not (nothing of the job was done)."""
        retry = self._settings().jobs.retry_after_s
        if self._memory_critical():
            return RequestError("memory is critical; send the job again later", code="memory_pressure",
                                retry_after_s=retry)
        if self._stop.is_set() or not self._may_take():
            return RequestError("this device takes no work now; send the job again", code="busy",
                                retry_after_s=retry)
        if not self._slot.try_acquire():
            return RequestError(f"all {self._slot.limit} job slot(s) are taken; send the job again",
                                code="busy", retry_after_s=retry)
        return None

    def _run(self, job: FleetJob, agent_job_id: str) -> None:
        try:
            with self._watch(agent_job_id):
                record = self._pipeline.run(agent_job_id, Source("fleet", job.job_id),
                                            lambda: self._load(job), summarize=job.summarize)
            result: dict[str, Any] = {
                "status": "ok", "text": record["transcript"], "language": record["language"],
                "audio_s": record["audio_s"], "summary": record["summary"], "engines": record["engines"],
                "timings_ms": record["timings_ms"], "agent_job_id": agent_job_id}
            self.done += 1
        except AgentError as exc:
            result = {"status": "error", "error": exc.as_dict(), "agent_job_id": agent_job_id}
            self.failed += 1
        except Exception:
            log.exception("fleet: job %s failed", job.job_id)
            result = {"status": "error", "error": AgentError("internal error; see the agent's log").as_dict(),
                      "agent_job_id": agent_job_id}
            self.failed += 1
        try:
            self._results.put(job.job_id, result)
            self._reply(job.reply_to, job.job_id, result, job.transaction, job.correlation)
        finally:
            with self._lock:
                self._running.pop(job.job_id, None)
            self._slot.release()
            self.sync()

    def _load(self, job: FleetJob) -> Loaded:
        s = self._settings()
        if job.audio_b64 is not None:
            data = _b64(job.audio_b64)
        else:
            assert job.url is not None
            data = fetch(job.url, max_bytes=s.mqtt.max_payload_bytes, timeout_s=s.fleet.fetch_timeout_s)
        from agent.audio.wav import decode_bytes  # numpy: loaded with the first audio

        audio = decode_bytes(data, max_bytes=s.inbox.max_bytes, max_duration_s=s.inbox.max_duration_s)
        return Loaded(audio, hashlib.blake2b(data, digest_size=16).hexdigest())

    def _reply(self, reply_to: str, job_id: str | None, body: dict[str, Any], transaction: str | None,
               correlation: bytes | None) -> None:
        link = self._link()
        if link is None:
            log.warning("fleet: no broker link; the result of job %s is lost", job_id)
            return
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        answer = {"job_id": job_id, **body}
        if transaction is not None:
            answer["transaction"] = transaction
        link.publish(reply_to, envelope(self._topics().device_id, answer), qos=1, properties=props)

    # --- validation ----------------------------------------------------------------------

    def _parse(self, payload: bytes, props: Any) -> FleetJob:
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            body = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            if response_topic:
                raise _Refused(RequestError("a job must be a JSON object", code="bad_request"),
                               response_topic, None, None, correlation) from None
            raise _Unanswerable(f"not JSON ({type(exc).__name__})") from None
        if not isinstance(body, dict):
            if response_topic:
                raise _Refused(RequestError("a job must be a JSON object", code="bad_request"),
                               response_topic, None, None, correlation)
            raise _Unanswerable("not a JSON object")
        reply_to = body.get("reply_to", response_topic)
        if not _valid_topic(reply_to):
            if response_topic and _valid_topic(response_topic):
                raise _Refused(RequestError("'reply_to' must be a topic name without wildcards",
                                            code="bad_request", field="reply_to"),
                               response_topic, None, None, correlation)
            raise _Unanswerable(f"reply_to {str(reply_to)[:80]!r}")
        job_id = body.get("job_id")
        transaction = body.get("transaction") if isinstance(body.get("transaction"), str) else None

        def refuse(message: str, code: str = "bad_request", **details: Any) -> _Refused:
            jid = job_id if isinstance(job_id, str) else None
            return _Refused(RequestError(message, code=code, **details), reply_to, jid, transaction, correlation)

        limit = self._settings().mqtt.max_payload_bytes
        if len(payload) > limit:
            raise refuse(f"job of {len(payload)} bytes exceeds mqtt.max_payload_bytes ({limit})",
                         code="payload_too_large")
        if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID:
            raise refuse(f"'job_id' must be a non-empty string of at most {MAX_JOB_ID} characters", field="job_id")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise refuse(f"unknown field '{unknown[0]}'", field=unknown[0])
        audio_b64, url = body.get("audio_b64"), body.get("url")
        if (audio_b64 is None) == (url is None):
            raise refuse("give exactly one of 'audio_b64' or 'url'")
        for name, value in (("audio_b64", audio_b64), ("url", url)):
            if value is not None and not isinstance(value, str):
                raise refuse(f"field '{name}' must be a string", field=name)
        if url is not None:   # refuse a file:// or ftp:// URL before taking a slot
            try:
                _check_url(url)
            except RequestError as exc:
                raise refuse(exc.message, field="url") from None
        summarize = body.get("summarize", True)
        if not isinstance(summarize, bool):
            raise refuse("field 'summarize' must be a boolean", field="summarize")
        if "transaction" in body and transaction is None:
            raise refuse("field 'transaction' must be a string", field="transaction")
        return FleetJob(job_id, reply_to, audio_b64, url, summarize, transaction, correlation)


class _Unanswerable(Exception):
    """A job without a usable reply topic: logged and dropped (there is nobody to tell)."""


class _Refused(Exception):
    def __init__(self, error: AgentError, reply_to: str, job_id: str | None, transaction: str | None,
                 correlation: bytes | None) -> None:
        super().__init__(error.message)
        self.error, self.reply_to, self.job_id = error, reply_to, job_id
        self.transaction, self.correlation = transaction, correlation


def _valid_topic(topic: Any) -> bool:
    return (isinstance(topic, str) and 0 < len(topic.encode("utf-8")) <= 65535
            and not any(c in topic for c in "+#\0"))


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'audio_b64' is not valid base64", code="bad_request") from None


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RequestError("'url' must be an http:// or https:// URL", code="bad_request", field="url")


def fetch(url: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """GET `url` (http/https), refusing more than `max_bytes` and taking at most `timeout_s` in all."""
    _check_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise RequestError(f"fetching the audio failed: HTTP {response.status_code}",
                                   code="fetch_failed", http_status=response.status_code)
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise RequestError(f"the audio at the URL is {length} bytes, more than {max_bytes}",
                                   code="payload_too_large")
            data = bytearray()
            for chunk in response.iter_content(chunk_size=65536):
                data += chunk
                if len(data) > max_bytes:
                    raise RequestError(f"the audio at the URL is more than {max_bytes} bytes",
                                       code="payload_too_large")
                if time.monotonic() > deadline:
                    raise RequestError(f"fetching the audio took longer than {timeout_s:g} s",
                                       code="fetch_failed")
            return bytes(data)
    except requests.RequestException as exc:
        raise RequestError(f"fetching the audio failed: {type(exc).__name__}", code="fetch_failed") from None
