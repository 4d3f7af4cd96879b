"""Retained copies of the latest transcript, summary, speech state and telemetry: `<root>/last/<name>`.

Why: events are not retained (a late subscriber must not take an old event for a new one), so a
dashboard or Home Assistant that (re)starts saw `unknown` until something new happened. These
copies are facts ("the last transcript was ...", "speech is / is not going on"), retained, and
what Home Assistant's sensors read (agent/ops/homeassistant.py):

| topic | body |
| --- | --- |
| `last/transcript` | `job_id`, `source`, `text` (bounded), `truncated`, `chars`, `language`, `engine` |
| `last/summary` | `job_id`, `source`, `text` (bounded), `truncated`, `chars`, `engine` |
| `last/speech` | `speaking` (bool), `segment_id`: from the latest `vad` event; `false` at start |
| `last/telemetry` | the latest `telemetry` message, as is |

Long text is cut to TEXT_MAX_CHARS characters and, JSON-encoded, TEXT_MAX_BYTES bytes, with
`truncated: true` and the full length in `chars`: Home Assistant's recorder stores no attributes
above 16 KiB (and warns), and a retained message stays in the broker's memory. The full text is
in the event (and the inbox record).

Copies are published straight on the connection (retained, QoS 1), not through the outbox: only
the latest value matters. While offline the latest one is remembered and sent on (re)connect,
under the current root (a new device id gets them too). The events themselves stay durable.

Transcript and summary copies go out from a sender thread of their own, at most one round per
SEND_EVERY_S: the first copy after a quiet spell at once, and under a burst of jobs (hundreds of
queued files) only the latest copy of each name per round. Sent from the job's thread, every copy
cost a publish, its PUBACK and thread wake-ups: about a fifth of the agent's per-file work with a
model-free engine (bench/ab.py). A retained value is only ever read as "the latest", so a copy
that a newer one replaced within the round loses nothing. Speech and telemetry copies are rare and
go out at once, as made.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from agent.mqtt.link import live
from agent.mqtt.messages import envelope

log = logging.getLogger(__name__)

TEXT_MAX_CHARS = 4000
TEXT_MAX_BYTES = 12_000
NAMES = ("transcript", "summary", "speech", "telemetry")
#: Copies sent by the sender thread, the latest of each name per round (see above).
COALESCED = ("transcript", "summary")
SEND_EVERY_S = 0.1
_TEXT_FIELDS = {"transcript": ("job_id", "source", "language", "engine", "audio_s"),
                "summary": ("job_id", "source", "engine")}


def bounded_text(text: str, max_chars: int = TEXT_MAX_CHARS, max_bytes: int = TEXT_MAX_BYTES) -> tuple[str, bool]:
    """`text` cut so it has at most `max_chars` characters and its JSON string at most `max_bytes`
    UTF-8 bytes (escapes counted); True when anything was cut."""
    cut = text[:max_chars]
    while cut and len(json.dumps(cut, ensure_ascii=False).encode("utf-8", "backslashreplace")) > max_bytes:
        cut = cut[: len(cut) * 3 // 4]   # a few rounds at most: each removes a quarter
    return cut, cut != text


def copy_of(event: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, retained body) for an event worth a retained copy, else None."""
    if event in _TEXT_FIELDS:
        raw = body.get("text")
        full = raw if isinstance(raw, str) else ""
        text, truncated = bounded_text(full)
        kept = {k: body[k] for k in _TEXT_FIELDS[event] if k in body}
        return event, {**kept, "text": text, "truncated": truncated, "chars": len(full)}
    if event == "vad" and body.get("event") in ("speech_start", "speech_end"):
        return "speech", {"speaking": body["event"] == "speech_start", "segment_id": body.get("segment_id")}
    return None


class LastValues:
    """Keeps the latest copy of each name and publishes it retained (now when connected, else on connect).

    `topics` name where copies go (and the device id in the envelope); both they and the
    connection change with the config and are pushed: `retarget(topics)`, `attach(link)`.
    """

    def __init__(self, topics: Any) -> None:
        self._link: Any = None
        self._topics = topics
        self._lock = threading.Lock()
        # Nothing is known about speech at start: not in a segment (the retained value of an
        # earlier run may say `speaking: true` from a crash mid-segment).
        self._latest: dict[str, dict[str, Any]] = {"speech": {"speaking": False, "segment_id": None}}
        self._due: set[str] = set()   # coalesced names whose latest copy the sender has not sent yet
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None

    def attach(self, link: Any) -> None:
        """Send copies on this connection from now on."""
        self._link = link

    def retarget(self, topics: Any) -> None:
        """New topic names (prefix or device id changed)."""
        self._topics = topics

    def observe(self, event: str, body: dict[str, Any]) -> None:
        """Called with every event the agent emits; keeps (and sends) copies of the ones that matter."""
        try:
            copy = copy_of(event, body)
        except Exception:   # noqa: BLE001 - a copy must never fail the event it copies
            log.exception("last %s: cannot copy the event", event)
            return
        if copy is not None:
            self._set(*copy)

    def telemetry(self, body: dict[str, Any]) -> None:
        self._set("telemetry", body)

    def on_connect(self) -> None:
        with self._lock:
            self._due.clear()   # every latest copy goes out now
            for name, body in self._latest.items():
                self._send(name, body)

    def _set(self, name: str, body: dict[str, Any]) -> None:
        with self._lock:   # held while sending: two copies of one name go out in the order made
            self._latest[name] = body
            if name not in COALESCED:
                self._send(name, body)
                return
            self._due.add(name)
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_due, name="last-values", daemon=True)
                self._sender.start()
        self._wake.set()

    def _send_due(self) -> None:
        """The sender thread: the latest copy of each due name, then a pause (see the module docstring)."""
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                due, self._due = self._due, set()
                for name in sorted(due):
                    self._send(name, self._latest[name])
            time.sleep(SEND_EVERY_S)

    def _send(self, name: str, body: dict[str, Any]) -> None:
        link = live(self._link)
        if link is None:
            return   # sent by on_connect
        try:
            link.publish(self._topics.last(name), envelope(self._topics.device_id, body), qos=1, retain=True)
        except Exception as exc:   # noqa: BLE001 - e.g. the link was just replaced: on_connect sends it
            log.debug("last %s: publish failed: %s", name, exc)
