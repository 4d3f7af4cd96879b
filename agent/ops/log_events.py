"""`<root>/event/log`: the agent's log lines at `logs.mqtt_level` and above, over MQTT.

A logging handler on the root logger. `emit` never blocks and never publishes: it only counts
the line into a small table keyed by the log *statement* (level, logger, message template), so
10,000 repeats of one warning cost 10,000 increments, not 10,000 messages. A sender thread takes
the oldest entry whenever the token bucket (`logs.mqtt_max_per_minute`, bursts of up to
BURST) allows and publishes it once, with `count` = how often it was logged meanwhile. Distinct
statements beyond PENDING_MAX are counted as `dropped` on the next line that goes out. The
lines are QoS 0 and published on the connection itself, never stored in the outbox: a Pi on a
slow link drops log lines, not events.

No secrets: every configured secret (agent/settings.py `secret=True`: broker password, API
keys) is replaced by `***` in the message and the exception text before a line is kept.
Lines logged while publishing (paho's own warnings on this thread) are ignored, so the handler
cannot feed itself.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import typing
from collections import OrderedDict
from typing import Any, Callable

from agent.mqtt.link import live
from agent.mqtt.messages import envelope
from agent.settings import LogsSettings, Settings
from agent.timestamps import utc_iso

PENDING_MAX = 64          # distinct log statements waiting to go out; more are counted as dropped
BURST = 10                # lines that may go out at once after a quiet spell
MESSAGE_MAX = 1000        # characters of message (and of the exception line) in one line
REDACTED = "***"
_LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret value of the settings (fields marked `secret=True`), longest first."""
    found: list[str] = []

    def walk(obj: Any) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(value)
            elif f.metadata.get("secret") and isinstance(value, str) and value:
                found.append(value)

    walk(settings)
    return sorted(set(found), key=len, reverse=True)


@dataclasses.dataclass
class _Line:
    level: str
    logger: str
    message: str
    first_ts: str
    count: int = 1


class LogLines(logging.Handler):
    def __init__(self, settings: Settings, topics: Any, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(level=logging.DEBUG)
        self._clock = clock
        self._guard = threading.Lock()
        self._pending: OrderedDict[tuple[int, str, str], _Line] = OrderedDict()
        self._dropped = 0
        self._tokens = float(BURST)
        self._refilled = clock()
        self._link: Any = None
        self._topics = topics
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.reconfigure(settings)
        self._thread = threading.Thread(target=self._send_loop, name="log-lines", daemon=True)
        self._thread.start()

    # --- pushed by the app -----------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        logs: LogsSettings = settings.logs
        with self._guard:
            self._threshold = _LEVELS.get(logs.mqtt_level)   # None: off
            self._per_s = logs.mqtt_max_per_minute / 60.0
            self._secrets = configured_secrets(settings)

    def attach(self, link: Any) -> None:
        self._link = link
        self._wake.set()

    def retarget(self, topics: Any) -> None:
        self._topics = topics

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()
        super().close()

    # --- logging side: cheap, never blocks on the network -----------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        threshold = self._threshold
        if threshold is None or record.levelno < threshold or threading.current_thread() is self._thread:
            return
        key = (record.levelno, record.name, str(record.msg)[:200])
        with self._guard:
            line = self._pending.get(key)
            if line is not None:
                line.count += 1
                return
            if len(self._pending) >= PENDING_MAX:
                self._dropped += 1
                return
        try:
            line = _Line(record.levelname, record.name, self._text(record), utc_iso(record.created))
        except Exception:   # a message whose arguments do not format: logging's own rule, never raise
            self.handleError(record)
            return
        with self._guard:
            if key in self._pending:
                self._pending[key].count += 1
            else:
                self._pending[key] = line
        self._wake.set()

    def _text(self, record: logging.LogRecord) -> str:
        text = record.getMessage()[:MESSAGE_MAX]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {str(exc)[:MESSAGE_MAX]})"
        return self.redact(text)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    # --- sender thread -----------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while not self._stopped.is_set() and self._send_one():
                pass

    def _send_one(self) -> bool:
        """Publish the oldest waiting line if the bucket and the connection allow; False when not."""
        link = live(self._link)
        now = self._clock()
        with self._guard:
            self._tokens = min(float(BURST), self._tokens + (now - self._refilled) * self._per_s)
            self._refilled = now
            if link is None or not self._pending or self._tokens < 1:
                return False
            self._tokens -= 1
            _, line = self._pending.popitem(last=False)
            dropped, self._dropped = self._dropped, 0
        body = {"level": line.level, "logger": line.logger, "message": line.message, "count": line.count,
                "first_ts": line.first_ts, **({"dropped": dropped} if dropped else {})}
        try:
            link.publish(self._topics.event("log"), envelope(self._topics.device_id, body), qos=0)
        except Exception:   # noqa: BLE001 - a log line is not worth an error of its own
            return False
        return True
