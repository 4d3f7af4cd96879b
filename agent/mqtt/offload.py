"""The device's side of fleet offload: send one job's audio to the workers, wait for their answer.

Used by the `fleet` transcriber (agent/engines/fleet.py) as its `offload` callable. A job is
published (QoS 1) to `<prefix>/jobs/transcribe`, the topic the workers share (agent/sources/
fleet.py), with `reply_to` = this device's `<prefix>/results/<device_id>/offload` and
`summarize: false` (the device summarizes its own transcript). Only while the engine is `fleet`
is that reply topic subscribed. Answers are written by other machines, so each one is checked:
a JSON object naming a job this device is waiting for (a random id), a status, bounded text, and
worker and engine names that are plain names; anything else is dropped with a debug line.
Nothing in an answer names a file, program or host that the device then uses.

No answer within the timeout, the broker away, or MQTT 5's "no matching subscribers" on the
publish (no worker at all): `EngineError`, and the engine falls back. The broker cannot always
say that nobody took a job (a monitor subscribed to `#` makes every publish "delivered"), so
after one job went unanswered the fleet counts as silent: the next jobs wait only SILENT_WAIT_S
for a worker's `accepted` before falling back, until some worker answers again.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import threading
import time
from typing import Any

from agent.errors import EngineError
from agent.mqtt.link import live
from agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

MAX_TEXT = 100_000                          # characters of a worker's transcript kept
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NO_SUBSCRIBERS = 16                        # MQTT 5 PUBACK reason: nobody took the job
PUBACK_WAIT_S = 5.0
SILENT_WAIT_S = 5.0                         # wait for a sign of life once the fleet went silent


class FleetOffload:
    def __init__(self, topics: Topics, enabled: bool) -> None:
        self._topics = topics
        self._enabled = enabled
        self._link: Any = None
        self._routed: tuple[Any, str] | None = None
        self._lock = threading.Lock()
        # job id -> (a worker took it, the final answer came, the answer)
        self._waiting: dict[str, tuple[threading.Event, threading.Event, list[dict[str, Any]]]] = {}
        self._silent = False

    # --- pushed by the app ---------------------------------------------------------------

    def attach(self, link: Any) -> None:
        with self._lock:
            self._link = link
        self.sync()

    def reconfigure(self, settings: Any, topics: Topics) -> None:
        with self._lock:
            self._topics, self._enabled = topics, settings.transcriber.engine == "fleet"
        self.sync()

    def sync(self) -> None:
        """Subscribed to this device's result topic exactly while the engine is `fleet`."""
        with self._lock:
            wanted = (self._link, self._topics.offload_results) if self._enabled and self._link else None
            if wanted == self._routed:
                return
            if self._routed is not None:
                self._routed[0].unroute(self._routed[1])
            if wanted is not None:
                wanted[0].route(wanted[1], self.on_message)
            self._routed = wanted

    # --- one job -------------------------------------------------------------------------

    def __call__(self, wav: bytes, timeout_s: float) -> dict[str, Any]:
        """The worker's `ok` answer, or EngineError (details `worker_code` when a worker refused it)."""
        link = live(self._link)
        if link is None or self._routed is None:
            raise EngineError("no broker connection to reach the fleet", code="engine_unavailable")
        job_id = "offload-" + secrets.token_hex(16)
        alive, done, box = threading.Event(), threading.Event(), []
        with self._lock:
            self._waiting[job_id] = (alive, done, box)
        try:
            body = {"job_id": job_id, "audio_b64": base64.b64encode(wav).decode("ascii"),
                    "reply_to": self._topics.offload_results, "summarize": False}
            t0 = time.monotonic()
            info = link.publish(self._topics.jobs, json.dumps(body).encode(), qos=1)
            info.wait_for_publish(timeout=min(PUBACK_WAIT_S, timeout_s))
            refused = link.puback_failure(info.mid)
            if refused == _NO_SUBSCRIBERS:
                raise EngineError("no fleet worker is subscribed", code="engine_unavailable")
            if refused is not None:   # e.g. 135: the ACL does not let this device publish jobs
                raise EngineError(f"the broker refused the job (reason {refused}; see docs/mosquitto-acl.md)",
                                  code="engine_unavailable")
            if self._silent and not alive.wait(min(SILENT_WAIT_S, timeout_s)):
                raise EngineError(f"no fleet worker took the job within {min(SILENT_WAIT_S, timeout_s):g} s "
                                  "(none answered the job before either)", code="engine_unavailable")
            if not done.wait(max(0.0, timeout_s - (time.monotonic() - t0))):
                self._silent = self._silent or not alive.is_set()
                raise EngineError(f"no fleet worker answered within {timeout_s:g} s", code="engine_unavailable")
            answer = box[0]
        finally:
            with self._lock:
                self._waiting.pop(job_id, None)
        if answer["status"] == "error":
            error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
            code = str(error.get("code", "engine_error"))[:64]
            raise EngineError(f"fleet worker {answer['device_id']}: {code}", code="engine_error", worker_code=code)
        return answer

    def on_message(self, msg: Any) -> None:
        """paho's thread: a worker's answer (`accepted` is only a sign of life: the wait goes on)."""
        try:
            answer = json.loads(bytes(msg.payload))
        except (ValueError, UnicodeDecodeError):
            log.debug("fleet offload: an answer that is not JSON was dropped")
            return
        if not isinstance(answer, dict) or answer.get("status") not in ("accepted", "ok", "error"):
            return
        with self._lock:
            waiting = self._waiting.get(answer.get("job_id")) if isinstance(answer.get("job_id"), str) else None
        if waiting is None:
            log.debug("fleet offload: an answer for no job waiting here was dropped (late, or not ours)")
            return
        alive, done, box = waiting
        self._silent = False
        alive.set()
        if answer["status"] == "accepted" or done.is_set():
            return
        box.append(_checked(answer))
        done.set()


def _checked(answer: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the engine uses, each bounded; names that are not plain names become '?'."""
    def name(value: Any) -> str:
        return value if isinstance(value, str) and _NAME.match(value) else "?"

    engines = answer.get("engines") if isinstance(answer.get("engines"), dict) else {}
    text = answer.get("text") if isinstance(answer.get("text"), str) else ""
    language = answer.get("language")
    return {"status": answer["status"], "device_id": name(answer.get("device_id")), "text": text[:MAX_TEXT],
            "language": language if isinstance(language, str) and _NAME.match(language) else None,
            "engines": {"transcriber": name(engines.get("transcriber"))},
            "error": answer.get("error") if isinstance(answer.get("error"), dict) else None}
