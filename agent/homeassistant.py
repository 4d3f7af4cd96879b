"""Home Assistant MQTT discovery: one retained device config, bound to `<root>/availability`.

`discovery_config` is a pure function of the topics and the version: it returns Home Assistant's
*device-based* discovery document (`dev`, `o`, `cmps`), published retained at
`<discovery_prefix>/device/<device_id>/config`. Every entity reads topics the agent publishes
anyway; nothing is published for Home Assistant alone except this one document:

| entity | platform | reads / writes |
| --- | --- | --- |
| Voice activity | event (`speech_start`, `speech_end`) | `<root>/event/vad` |
| Transcript | event (`transcript`, the text and job as attributes) | `<root>/event/transcript` |
| Last transcript | sensor (state cut to 255 characters, full text as attribute) | `<root>/event/transcript` |
| Last summary | sensor (same) | `<root>/event/summary` |
| Memory level | sensor, enum ok/warning/critical | `<root>/state` `memory_level` |
| Jobs running | sensor | `<root>/state` `jobs.running` |
| Speech | binary sensor, on at speech_start, off at speech_end | `<root>/event/vad` |
| Pause / Resume | buttons | `<root>/request/pause` / `resume`, payload `{}` |
| Listening | switch, state `<root>/state` `listening` | `<root>/request/listening` `{"listening": bool}` |

Home Assistant's event entities need a JSON payload carrying `event_type`; the agent's events do
not, so a `value_template` builds it from the `event` field of a `vad` event (`speech_start` /
`speech_end`, see agent/listener.py) or the text of a transcript.

`HomeAssistantDiscovery` holds the little state the wiring needs: it publishes the document on
every (re)connect and whenever Home Assistant announces `online` on `<discovery_prefix>/status`,
and, when discovery is switched off live (or the device id or prefix changes), removes the
document it published with an empty retained payload. An agent that *starts* with discovery
disabled publishes nothing, so it never clobbers a document another process owns.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

from agent.settings import HomeAssistantSettings
from agent.topics import Topics

log = logging.getLogger(__name__)

ORIGIN_NAME = "voice-agent"
STATE_MAX = 255   # Home Assistant refuses sensor states longer than this

_VAD_KIND = "value_json.event"   # "speech_start" | "speech_end" (agent/listener.py)


def _text_sensor(name: str, topic: str, icon: str, unique: str) -> dict[str, Any]:
    """A sensor whose state is the event's text (cut to 255) and whose attributes hold all of it."""
    return {
        "p": "sensor", "name": name, "unique_id": unique, "icon": icon,
        "state_topic": topic,
        "value_template": "{{ (value_json.text | default(''))[:%d] }}" % STATE_MAX,
        "json_attributes_topic": topic,
        "json_attributes_template": (
            "{{ {'text': value_json.text | default(''), 'job_id': value_json.job_id | default(none), "
            "'source': value_json.source | default(none), 'engine': value_json.engine | default(none), "
            "'ts': value_json.ts | default(none)} | tojson }}"),
    }


def discovery_config(topics: Topics, version: str) -> dict[str, Any]:
    """Home Assistant's device-based discovery document for one agent (pure; unit-testable)."""
    root, device = topics.root, topics.device_id
    vad, transcript, summary = topics.event("vad"), topics.event("transcript"), topics.event("summary")

    def uid(key: str) -> str:
        return f"voice_agent_{device}_{key}"

    components: dict[str, dict[str, Any]] = {
        "vad": {
            "p": "event", "name": "Voice activity", "unique_id": uid("vad"), "icon": "mdi:account-voice",
            "state_topic": vad, "event_types": ["speech_start", "speech_end"],
            "value_template": "{{ {'event_type': %s, 'segment_id': value_json.segment_id | default(none)}"
                              " | tojson }}" % _VAD_KIND,
        },
        "transcript": {
            "p": "event", "name": "Transcript", "unique_id": uid("transcript"), "icon": "mdi:text-to-speech",
            "state_topic": transcript, "event_types": ["transcript"],
            "value_template": "{{ {'event_type': 'transcript', 'text': value_json.text | default(''), "
                              "'job_id': value_json.job_id | default(none), "
                              "'language': value_json.language | default(none), "
                              "'source': value_json.source | default(none)} | tojson }}",
        },
        "last_transcript": _text_sensor("Last transcript", transcript, "mdi:card-text-outline",
                                        uid("last_transcript")),
        "last_summary": _text_sensor("Last summary", summary, "mdi:text-box-check-outline", uid("last_summary")),
        "memory_level": {
            "p": "sensor", "name": "Memory level", "unique_id": uid("memory_level"), "icon": "mdi:memory",
            "device_class": "enum", "options": ["ok", "warning", "critical"], "entity_category": "diagnostic",
            "state_topic": topics.state, "value_template": "{{ value_json.memory_level | default('ok') }}",
        },
        "jobs_running": {
            "p": "sensor", "name": "Jobs running", "unique_id": uid("jobs_running"), "icon": "mdi:cog-sync",
            "state_class": "measurement", "entity_category": "diagnostic",
            "state_topic": topics.state, "value_template": "{{ value_json.jobs.running }}",
            "json_attributes_topic": topics.state,
            "json_attributes_template": "{{ {'limit': value_json.jobs.limit} | tojson }}",
        },
        "speech": {
            "p": "binary_sensor", "name": "Speech", "unique_id": uid("speech"), "device_class": "sound",
            "state_topic": vad, "payload_on": "ON", "payload_off": "OFF",
            "value_template": "{% set kind = " + _VAD_KIND + " %}"
                              "{{ 'ON' if kind == 'speech_start' else 'OFF' if kind == 'speech_end' else '' }}",
        },
        "pause": {
            "p": "button", "name": "Pause", "unique_id": uid("pause"), "icon": "mdi:pause",
            "command_topic": f"{root}/request/pause", "payload_press": "{}",
        },
        "resume": {
            "p": "button", "name": "Resume", "unique_id": uid("resume"), "icon": "mdi:play",
            "command_topic": f"{root}/request/resume", "payload_press": "{}",
        },
        "listening": {
            "p": "switch", "name": "Listening", "unique_id": uid("listening"), "icon": "mdi:microphone",
            "state_topic": topics.state, "state_on": "ON", "state_off": "OFF",
            "value_template": "{{ 'ON' if value_json.listening else 'OFF' }}",
            "command_topic": f"{root}/request/listening", "payload_on": "ON", "payload_off": "OFF",
            "command_template": '{"listening": {{ "true" if value == "ON" else "false" }}}',
        },
    }
    return {
        "dev": {"ids": [f"voice_agent_{device}"], "name": device, "mf": "voice-agent",
                "mdl": "voice-agent edge device", "sw": version},
        "o": {"name": ORIGIN_NAME, "sw": version},
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "cmps": components,
    }


def discovery_payload(topics: Topics, version: str) -> bytes:
    return json.dumps(discovery_config(topics, version), separators=(",", ":"), ensure_ascii=False).encode()


class HomeAssistantDiscovery:
    """Publishes, republishes and removes the discovery document as config and broker change.

    `sync()` is called on every (re)connect and after every config change; it is idempotent.
    `link()` returns the current MqttLink (replaced by the app when the mqtt section changes).
    """

    def __init__(self, *, settings: Callable[[], HomeAssistantSettings], topics: Callable[[], Topics],
                 link: Callable[[], Any], version: str) -> None:
        self._settings = settings
        self._topics = topics
        self._link = link
        self._version = version
        self._lock = threading.RLock()
        self._owned: str | None = None        # discovery topic this process publishes (to remove later)
        self._routed: tuple[Any, str] | None = None   # (link, status topic) subscribed
        self.published = 0

    def sync(self, *, force: bool = True) -> None:
        """Make the broker match the config: document present (republished when `force`) or removed."""
        with self._lock:
            link = self._link()
            cfg = self._settings()
            topics = self._topics()
            wanted = topics.ha_discovery(cfg.discovery_prefix) if cfg.enabled else None
            connected = link is not None and link.connected.is_set()
            status = Topics.ha_status(cfg.discovery_prefix) if cfg.enabled else None
            self._route_status(link, status)
            if self._owned is not None and self._owned != wanted:
                if not connected:
                    return   # removed (and the new one published) on connect: sync runs on every connect
                link.publish(self._owned, b"", retain=True)
                log.info("home assistant: discovery removed from %s", self._owned)
                self._owned = None
            if wanted is None:
                return
            if connected and (force or self._owned != wanted):
                link.publish(wanted, discovery_payload(topics, self._version), retain=True)
                self.published += 1
                log.info("home assistant: discovery published at %s", wanted)
            self._owned = wanted

    def _route_status(self, link: Any, status: str | None) -> None:
        current = (link, status) if link is not None and status is not None else None
        if self._routed == current:
            return
        if self._routed is not None:
            old_link, old_status = self._routed
            old_link.unroute(old_status)
        self._routed = None
        if current is not None:
            link.route(status, self._on_status)
            self._routed = current

    def _on_status(self, msg: Any) -> None:
        """Home Assistant (re)started: it forgets discovery that is not retained, so send it again."""
        if bytes(msg.payload).strip().lower() == b"online":
            log.info("home assistant announced online; republishing discovery")
            self.sync(force=True)
