"""Request -> validation -> handler -> answer. No request can crash the agent.

Cheap commands run one after another on a control thread (never on paho's network thread, which
must keep reading); heavy ones take a job slot and a thread of their own, or are answered
`busy` / `memory_pressure` at once. The control thread's queue is bounded (CONTROL_QUEUE): a
flood of requests gets `busy` answers at once instead of growing the agent's memory without
limit. Any unexpected exception becomes an `internal` answer plus a log line with the traceback:
users never see a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as mqtt

from agent.errors import AgentError, RequestError
from agent.jobs.admission import Admission, Refusal, Ticket
from agent.jobs.runner import Runner
from agent.jobs.slot import new_job_id
from agent.mqtt.messages import envelope, error_answer, ok_answer
from agent.mqtt.link import MqttLink
from agent.settings import DEVICE, FLEET, Settings
from handlers.base import Command, Request, Services

log = logging.getLogger(__name__)

#: Requests waiting for the control thread; more are answered `busy` on arrival. Cheap commands
#: take milliseconds, so a full queue means a flood, not a backlog worth keeping.
CONTROL_QUEUE = 64
#: A request refused because the queue is full is parsed (for its `transaction`) only when this
#: small: the refusal runs on paho's network thread, which must not decode megabytes.
BUSY_PARSE_MAX = 65_536


@dataclass
class DispatchStats:
    requests: int = 0
    errors: int = 0
    busy: int = 0


class Dispatcher:
    def __init__(self, registry: dict[str, Command], services: Services, *, admission: Admission,
                 runner: Runner, settings: Settings, job_event: Callable[..., None],
                 stats: DispatchStats | None = None) -> None:
        """`stats`: the counters `stats` answers read (the app hands the same object to Services)."""
        self._admission = admission
        self._runner = runner
        self.registry = registry
        self.services = services
        self._settings = settings
        self._link: MqttLink | None = None   # pushed: attach()
        self._job_event = job_event
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(maxsize=CONTROL_QUEUE)
        self.stats = stats if stats is not None else DispatchStats()
        self._lock = threading.Lock()
        self._closed = False
        self._control = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self._control.start()

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Called on paho's network thread: hand off at once, or refuse at once when the queue is full."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            self._refuse_full(msg)

    def close(self) -> None:
        """Stop the control thread; requests still queued are dropped (the agent is stopping)."""
        self._closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def _control_loop(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None or self._closed:
                return
            try:
                self._handle(msg)
            except Exception:   # _handle answers every error itself; this only keeps the thread alive
                log.exception("control thread: request failed")

    def _refuse_full(self, msg: mqtt.MQTTMessage) -> None:
        link = self._link
        command = (link.topics.command_of(msg.topic) if link is not None else None) or ""
        transaction = None
        if len(msg.payload) <= BUSY_PARSE_MAX:
            try:
                body = json.loads(msg.payload.decode("utf-8"))
                value = body.get("transaction") if isinstance(body, dict) else None
                transaction = value if isinstance(value, str) else None
            except (ValueError, UnicodeDecodeError, RecursionError):
                pass
        with self._lock:
            self.stats.requests += 1
            self.stats.busy += 1
        exc = Refusal("busy", f"{CONTROL_QUEUE} requests are already waiting",
                      self._admission.retry_after_s).error()
        try:
            self._answer_error(msg, command, exc, transaction)
        except Exception:   # on paho's thread: never let an answer take the network loop down
            log.exception("answering busy failed")

    def reconfigure(self, settings: Settings) -> None:
        """The settings changed (payload limit, allowed commands)."""
        self._settings = settings

    def attach(self, link: MqttLink) -> None:
        """Answer on this connection from now on (a new one after a config change)."""
        self._link = link

    # --- the one entry point -------------------------------------------------------------

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        link = self._link
        if link is None:
            return
        command = link.topics.command_of(msg.topic) or ""
        transaction = None
        with self._lock:
            self.stats.requests += 1
        try:
            body = self._parse(msg.payload)
            transaction = body.get("transaction")
            if transaction is not None and not isinstance(transaction, str):
                transaction = None
                raise RequestError("field 'transaction' must be a string", code="bad_request", field="transaction")
            reply_topic, _props = link.reply_properties(msg)
            if reply_topic is not None and not link.topics.reply_allowed(reply_topic):
                raise RequestError(f"the Response Topic must lie below {link.topics.results}/ or "
                                   f"{link.topics.root}/response/; the request was not run",
                                   code="reply_topic_forbidden")
            spec = self._lookup(command)
            spec.validate(body)
            scope = FLEET if link.topics.is_fleet_wide(msg.topic) else DEVICE
            request = Request(command, body, transaction, self.services, scope=scope)
            if spec.heavy:
                self._start_heavy(spec, request, msg)
                return
            data = spec.run(request)
            sent = self._answer(msg, command, ok_answer(data, transaction))
            if spec.after is not None:
                _wait_sent(sent)
                spec.after(request, data)
        except AgentError as exc:
            self._answer_error(msg, command, exc, transaction)
        except Exception:
            log.exception("request %s failed", command)
            self._answer_error(msg, command, AgentError("internal error; see the agent's log"), transaction)

    def _parse(self, payload: bytes) -> dict[str, Any]:
        limit = self._settings.mqtt.max_payload_bytes
        if len(payload) > limit:
            raise RequestError(f"payload of {len(payload)} bytes exceeds mqtt.max_payload_bytes ({limit})",
                               code="payload_too_large")
        if not payload.strip():
            return {}
        try:
            body = json.loads(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError("payload is not valid UTF-8", code="bad_request") from None
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"payload is not valid JSON: {str(exc)[:120]}", code="bad_request") from None
        if not isinstance(body, dict):
            raise RequestError("payload must be a JSON object", code="bad_request")
        return body

    def _lookup(self, command: str) -> Command:
        spec = self.registry.get(command)
        if spec is None:
            raise RequestError(f"unknown command '{command[:80]}'", code="unknown_command")
        allowed = self._settings.mqtt.allowed_commands
        if allowed is not None and command not in allowed:
            raise RequestError(f"command '{command}' is not allowed on this device", code="forbidden")
        return spec

    # --- heavy commands under the job slot -----------------------------------------------

    def _start_heavy(self, spec: Command, request: Request, msg: mqtt.MQTTMessage) -> None:
        """Admitted (a ticket) or refused at once: `memory_pressure`, or `busy` (also while stopping)."""
        job_id = new_job_id()
        admitted = self._admission.try_admit(request=True)
        if isinstance(admitted, Refusal):
            if admitted.code == "busy":
                with self._lock:
                    self.stats.busy += 1
            self._job_event(job_id, "rejected", {"kind": "request", "name": spec.name},
                            error={"code": admitted.code})
            raise admitted.error()
        job = dataclasses.replace(request, job_id=job_id)
        threading.Thread(target=self._run_heavy, args=(admitted, spec, job, msg), name=f"job-{job_id}",
                         daemon=True).start()

    def _run_heavy(self, ticket: Ticket, spec: Command, request: Request, msg: mqtt.MQTTMessage) -> None:
        """The runner watches the command and gives the slot back once the answer is sent."""
        try:
            self._runner.call(ticket, request.job_id or spec.name, lambda: self._outcome(spec, request),
                              finish=lambda answer: self._answer_outcome(msg, spec.name, answer, request))
        except Exception:
            log.exception("job %s (%s): answering failed", request.job_id, spec.name)

    @staticmethod
    def _outcome(spec: Command, request: Request) -> dict[str, Any] | AgentError:
        try:
            return spec.run(request)
        except AgentError as exc:
            return exc
        except Exception:
            log.exception("job %s (%s) failed", request.job_id, spec.name)
            return AgentError("internal error; see the agent's log")

    def _answer_outcome(self, msg: mqtt.MQTTMessage, command: str, outcome: dict[str, Any] | AgentError,
                        request: Request) -> None:
        if isinstance(outcome, AgentError):
            self._answer_error(msg, command, outcome, request.transaction)
        else:
            self._answer(msg, command, ok_answer(outcome, request.transaction))

    # --- answers -------------------------------------------------------------------------

    def _answer_error(self, msg: mqtt.MQTTMessage, command: str, exc: AgentError,
                      transaction: str | None) -> None:
        with self._lock:
            self.stats.errors += 1
        self._answer(msg, command, error_answer(exc.as_dict(), transaction))

    def _answer(self, msg: mqtt.MQTTMessage, command: str, answer: dict[str, Any]) -> mqtt.MQTTMessageInfo | None:
        link = self._link
        if link is None:
            return None
        topic, props = link.reply_properties(msg)
        if topic is None or not link.topics.reply_allowed(topic):   # never on an event, state or config topic
            topic = link.topics.response(_safe_command(command))
        return link.publish(topic, envelope(link.topics.device_id, answer), qos=1, properties=props)


#: How long a command with an `after` step waits for its answer's PUBACK before going on anyway.
ANSWER_SENT_WAIT_S = 5.0


def _wait_sent(info: mqtt.MQTTMessageInfo | None) -> None:
    if info is None:
        return
    try:
        info.wait_for_publish(timeout=ANSWER_SENT_WAIT_S)
    except (RuntimeError, ValueError):   # not connected: nothing more to wait for
        pass


def _safe_command(command: str) -> str:
    """An unknown command is echoed in the response topic only if it is a sane topic fragment."""
    if command and len(command) <= 64 and all(c.isalnum() or c in "/_-" for c in command):
        return command
    return "unknown"
