"""Home Assistant MQTT discovery: one retained device config, bound to `<root>/availability`.

`discovery_config` is a pure function of the topics, the version and what the device has
(`Features`): it returns Home Assistant's *device-based* discovery document (`dev`, `o`, `cmps`),
published retained at `<discovery_prefix>/device/<device_id>/config`. Every entity reads a
*retained* topic the agent publishes anyway (`state`, `last/*`, see agent/ops/last_values.py), so
each one has a value right after Home Assistant restarts; only the two event entities read events
(an event entity fed a retained message would fire again on every restart):

| entity | platform | reads / writes |
| --- | --- | --- |
| Transcript | event (`transcript`, bounded text and job as attributes) | `<root>/event/transcript` |
| Last transcript / Last summary | sensor (state cut to 255 characters, bounded text as attribute) | `<root>/last/transcript` / `summary` |
| Memory level | sensor, enum ok/warning/critical | `<root>/state` `memory_level` |
| Jobs running | sensor | `<root>/state` `jobs.running` |
| Started | sensor, timestamp (the uptime) | `<root>/state` `started_at` |
| Paused | binary sensor | `<root>/state` `paused` |
| `<Kind>` alert | binary sensor, problem, one per alert kind | `<root>/state` `alerts.<kind>` |
| Pause / Resume | buttons | `<root>/request/pause` / `resume`, payload `{}` |
| Health | binary sensor, problem: on unless `ok`; status and reasons as attributes | `<root>/health` |
| Restart | button, device class restart | `<root>/request/restart`, payload `{}` |
| Jobs failed / rejected, Inbox backlog, Outbox queued, Memory used, CPU temperature | sensors (telemetry on; temperature where the device reports one) | `<root>/last/telemetry` |
| Voice activity | event (`speech_start`, `speech_end`), microphone only | `<root>/event/vad` |
| Speech | binary sensor, microphone only | `<root>/last/speech` `speaking` |
| Listening | switch, microphone only: the microphone alone, not a pause | `<root>/state` `listening`; `<root>/request/listening` |
| Wake word | event, one event type per configured model (`okay_nabu`, ...), with `probability`; microphone with listen.wake_word.models only | `<root>/event/wake` |

A component the device lacks (no microphone, no thermometer, telemetry off) is sent as its
platform alone (`{"p": "switch"}`): Home Assistant's documented way to remove a component of a
device, so an entity goes away when the config changes instead of staying `unknown`.

Long text: a transcript can be any length, and Home Assistant's recorder stores no attributes
above 16 KiB. Retained copies are bounded by the agent (agent/ops/last_values.py); the transcript
event entity cuts the text to ATTR_TEXT_MAX characters and sets `truncated`.

Home Assistant's event entities need a JSON payload carrying `event_type`; the agent's events do
not, so a `value_template` builds it from the `event` field of a `vad` event (`speech_start` /
`speech_end`, see agent/sources/listener.py) or the text of a transcript.

`HomeAssistantDiscovery` holds the little state the wiring needs: it publishes the document on
every (re)connect, whenever Home Assistant announces `online` on `<discovery_prefix>/status`, and
when the document changes (a microphone configured, telemetry switched on...), and, when
discovery is switched off live (or the device id or prefix changes), removes the document it
published with an empty retained payload. An agent that *starts* with discovery disabled publishes
nothing, so it never clobbers a document another process owns.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

from agent.ops.last_values import TEXT_MAX_CHARS
from agent.settings import HomeAssistantSettings
from agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

ORIGIN_NAME = "voice-agent"
STATE_MAX = 255   # Home Assistant refuses sensor states longer than this
ATTR_TEXT_MAX = TEXT_MAX_CHARS   # characters of text in an entity's attributes (recorder: 16 KiB)

#: Every alert kind the agent raises (agent/ops/alerts.py, agent/sources/listener.py for `capture`).
ALERT_KINDS = ("engine", "disk", "capture", "outbox", "config", "memory")

_VAD_KIND = "value_json.event"   # "speech_start" | "speech_end" (agent/sources/listener.py)


@dataclass(frozen=True)
class Features:
    """What the device has, which decides the optional entities."""

    microphone: bool = False    # listen.enabled (or a test source): VAD, speech and the listening switch
    telemetry: bool = False     # telemetry.interval_s > 0: the health sensors read <root>/last/telemetry
    temperature: bool = False   # the host reports a CPU temperature
    wake_models: tuple[str, ...] = ()   # listen.wake_word.models' names: the wake word event entity


def _text_sensor(name: str, topic: str, icon: str, unique: str) -> dict[str, Any]:
    """A sensor whose state is the copy's text (cut to 255) and whose attributes hold the bounded text."""
    return {
        "p": "sensor", "name": name, "unique_id": unique, "icon": icon,
        "state_topic": topic,
        "value_template": "{{ (value_json.text | default(''))[:%d] }}" % STATE_MAX,
        "json_attributes_topic": topic,
        "json_attributes_template": (
            "{{ {'text': (value_json.text | default(''))[:%d], "
            "'truncated': value_json.truncated | default(false), 'chars': value_json.chars | default(none), "
            "'job_id': value_json.job_id | default(none), 'source': value_json.source | default(none), "
            "'engine': value_json.engine | default(none), 'ts': value_json.ts | default(none)} | tojson }}"
            % ATTR_TEXT_MAX),
    }


def _telemetry_sensor(name: str, unique: str, icon: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"p": "sensor", "name": name, "unique_id": unique, "icon": icon, "entity_category": "diagnostic",
            "value_template": "{{ %s }}" % value, **extra}


def _problem_sensor(kind: str, state: str, unique: str) -> dict[str, Any]:
    """On while `state.alerts` names this kind (its level as attribute); `state` is always retained."""
    level = "((value_json.alerts | default({}))['%s'] | default('ok'))" % kind
    return {
        "p": "binary_sensor", "name": f"{kind.capitalize()} alert", "unique_id": unique,
        "device_class": "problem", "entity_category": "diagnostic",
        "state_topic": state, "payload_on": "ON", "payload_off": "OFF",
        "value_template": "{{ 'OFF' if %s == 'ok' else 'ON' }}" % level,
        "json_attributes_topic": state,
        "json_attributes_template": "{{ {'level': %s} | tojson }}" % level,
    }


def discovery_config(topics: Topics, version: str, features: Features = Features()) -> dict[str, Any]:
    """Home Assistant's device-based discovery document for one agent (pure; unit-testable)."""
    root, device, state = topics.root, topics.device_id, topics.state
    telemetry = topics.last("telemetry")

    def uid(key: str) -> str:
        return f"voice_agent_{device}_{key}"

    components: dict[str, dict[str, Any]] = {
        "transcript": {
            "p": "event", "name": "Transcript", "unique_id": uid("transcript"), "icon": "mdi:text-to-speech",
            "state_topic": topics.event("transcript"), "event_types": ["transcript"],
            "value_template": "{%% set text = value_json.text | default('') %%}"
                              "{{ {'event_type': 'transcript', 'text': text[:%d], "
                              "'truncated': text | length > %d, "
                              "'job_id': value_json.job_id | default(none), "
                              "'language': value_json.language | default(none), "
                              "'source': value_json.source | default(none)} | tojson }}"
                              % (ATTR_TEXT_MAX, ATTR_TEXT_MAX),
        },
        "last_transcript": _text_sensor("Last transcript", topics.last("transcript"),
                                        "mdi:card-text-outline", uid("last_transcript")),
        "last_summary": _text_sensor("Last summary", topics.last("summary"),
                                     "mdi:text-box-check-outline", uid("last_summary")),
        "memory_level": {
            "p": "sensor", "name": "Memory level", "unique_id": uid("memory_level"), "icon": "mdi:memory",
            "device_class": "enum", "options": ["ok", "warning", "critical"], "entity_category": "diagnostic",
            "state_topic": state, "value_template": "{{ value_json.memory_level | default('ok') }}",
        },
        "jobs_running": {
            "p": "sensor", "name": "Jobs running", "unique_id": uid("jobs_running"), "icon": "mdi:cog-sync",
            "state_class": "measurement", "entity_category": "diagnostic",
            "state_topic": state, "value_template": "{{ value_json.jobs.running }}",
            "json_attributes_topic": state,
            "json_attributes_template": "{{ {'limit': value_json.jobs.limit} | tojson }}",
        },
        "started": {
            "p": "sensor", "name": "Started", "unique_id": uid("started"), "icon": "mdi:timer-outline",
            "device_class": "timestamp", "entity_category": "diagnostic",
            "state_topic": state, "value_template": "{{ value_json.started_at }}",
        },
        "paused": {
            "p": "binary_sensor", "name": "Paused", "unique_id": uid("paused"), "icon": "mdi:pause-circle-outline",
            "state_topic": state, "payload_on": "ON", "payload_off": "OFF",
            "value_template": "{{ 'ON' if value_json.paused else 'OFF' }}",
        },
        **{f"{kind}_alert": _problem_sensor(kind, state, uid(f"{kind}_alert")) for kind in ALERT_KINDS},
        # the retained health summary (agent/ops/health.py): on while not ok, status and reasons as attributes
        "health": {
            "p": "binary_sensor", "name": "Health", "unique_id": uid("health"), "device_class": "problem",
            "entity_category": "diagnostic", "state_topic": topics.health, "payload_on": "ON", "payload_off": "OFF",
            "value_template": "{{ 'OFF' if value_json.status == 'ok' else 'ON' }}",
            "json_attributes_topic": topics.health,
            "json_attributes_template": "{{ {'status': value_json.status, 'reasons': "
                                        "value_json.reasons | map(attribute='detail') | list} | tojson }}",
        },
        "restart": {
            "p": "button", "name": "Restart", "unique_id": uid("restart"), "device_class": "restart",
            "entity_category": "config", "command_topic": f"{root}/request/restart", "payload_press": "{}",
        },
        "pause": {
            "p": "button", "name": "Pause", "unique_id": uid("pause"), "icon": "mdi:pause",
            "command_topic": f"{root}/request/pause", "payload_press": "{}",
        },
        "resume": {
            "p": "button", "name": "Resume", "unique_id": uid("resume"), "icon": "mdi:play",
            "command_topic": f"{root}/request/resume", "payload_press": "{}",
        },
    }
    health: dict[str, dict[str, Any]] = {
        "jobs_failed": _telemetry_sensor("Jobs failed", uid("jobs_failed"), "mdi:alert-circle-outline",
                                         "value_json.jobs.failed", state_class="total_increasing"),
        "jobs_rejected": _telemetry_sensor("Jobs rejected", uid("jobs_rejected"), "mdi:cancel",
                                           "value_json.jobs.rejected", state_class="total_increasing"),
        "inbox_waiting": _telemetry_sensor("Inbox backlog", uid("inbox_waiting"), "mdi:inbox-arrow-down",
                                           "value_json.inbox.waiting", state_class="measurement",
                                           unit_of_measurement="files"),
        "outbox_queued": _telemetry_sensor("Outbox queued", uid("outbox_queued"), "mdi:tray-full",
                                           "value_json.outbox.queued", state_class="measurement",
                                           unit_of_measurement="messages"),
        "memory_used": _telemetry_sensor("Memory used", uid("memory_used"), "mdi:memory",
                                         "value_json.memory.used_percent", state_class="measurement",
                                         unit_of_measurement="%"),
    }
    for sensor in health.values():
        sensor["state_topic"] = telemetry
    temperature = _telemetry_sensor("CPU temperature", uid("temperature"), "mdi:thermometer",
                                    "value_json.temperature_c", state_class="measurement",
                                    device_class="temperature", unit_of_measurement="°C", state_topic=telemetry)
    microphone: dict[str, dict[str, Any]] = {
        "vad": {
            "p": "event", "name": "Voice activity", "unique_id": uid("vad"), "icon": "mdi:account-voice",
            "state_topic": topics.event("vad"), "event_types": ["speech_start", "speech_end"],
            "value_template": "{{ {'event_type': %s, 'segment_id': value_json.segment_id | default(none)}"
                              " | tojson }}" % _VAD_KIND,
        },
        "speech": {
            "p": "binary_sensor", "name": "Speech", "unique_id": uid("speech"), "device_class": "sound",
            "state_topic": topics.last("speech"), "payload_on": "ON", "payload_off": "OFF",
            "value_template": "{{ 'ON' if value_json.speaking else 'OFF' }}",
        },
        "listening": {
            "p": "switch", "name": "Listening", "unique_id": uid("listening"), "icon": "mdi:microphone",
            "state_topic": state, "state_on": "ON", "state_off": "OFF",
            "value_template": "{{ 'ON' if value_json.listening else 'OFF' }}",
            "command_topic": f"{root}/request/listening", "payload_on": "ON", "payload_off": "OFF",
            "command_template": '{"listening": {{ "true" if value == "ON" else "false" }}}',
        },
    }
    wake = {"wake": {
        "p": "event", "name": "Wake word", "unique_id": uid("wake"), "icon": "mdi:account-voice",
        "state_topic": topics.event("wake"), "event_types": list(features.wake_models),
        "value_template": "{{ {'event_type': value_json.model, 'probability': value_json.probability}"
                          " | tojson }}",
    }}
    optional = [(wake, features.microphone and bool(features.wake_models)), (health, features.telemetry), ({"temperature": temperature}, features.telemetry and features.temperature),
                (microphone, features.microphone)]
    for group, present in optional:
        for key, component in group.items():
            components[key] = component if present else {"p": component["p"]}
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


def discovery_payload(topics: Topics, version: str, features: Features = Features()) -> bytes:
    return json.dumps(discovery_config(topics, version, features), separators=(",", ":"),
                      ensure_ascii=False).encode()


class HomeAssistantDiscovery:
    """Publishes, republishes and removes the discovery document as config and broker change.

    `sync()` is called on every (re)connect and after every config change; it is idempotent.
    The settings, topic names and what the device has (`Features`, which decide the optional
    entities) are pushed with `reconfigure()`, the current MqttLink (replaced by the app when the
    mqtt section changes) with `attach()`. `thermometer` (the telemetry collector's reading) is
    asked on every sync whether the host reports a temperature.
    """

    def __init__(self, *, settings: HomeAssistantSettings, topics: Topics, version: str,
                 features: Features = Features(),
                 thermometer: Callable[[], float | None] | None = None) -> None:
        self._settings = settings
        self._topics = topics
        self._link: Any = None
        self._features = features
        self._thermometer = thermometer
        self._version = version
        self._lock = threading.RLock()
        self._owned: str | None = None        # discovery topic this process publishes (to remove later)
        self._sent: bytes | None = None       # the document last published there
        self._routed: tuple[Any, str] | None = None   # (link, status topic) subscribed
        self.published = 0

    def reconfigure(self, settings: HomeAssistantSettings, topics: Topics, features: Features) -> None:
        """New settings, topic names or features; the next sync() makes the broker match them."""
        with self._lock:
            self._settings, self._topics, self._features = settings, topics, features

    def _features_now(self) -> Features:
        if self._thermometer is None:
            return self._features
        return replace(self._features, temperature=self._thermometer() is not None)

    def attach(self, link: Any) -> None:
        """The connection sync() publishes on from now on."""
        with self._lock:
            self._link = link

    def sync(self, *, force: bool = True) -> None:
        """Make the broker match the config: document present (republished when `force` or when it
        changed) or removed."""
        with self._lock:
            link = self._link
            cfg = self._settings
            topics = self._topics
            wanted = topics.ha_discovery(cfg.discovery_prefix) if cfg.enabled else None
            connected = link is not None and link.connected.is_set()
            status = Topics.ha_status(cfg.discovery_prefix) if cfg.enabled else None
            self._route_status(link, status)
            if self._owned is not None and self._owned != wanted:
                if not connected:
                    return   # removed (and the new one published) on connect: sync runs on every connect
                link.publish(self._owned, b"", retain=True)
                log.info("home assistant: discovery removed from %s", self._owned)
                self._owned, self._sent = None, None
            if wanted is None:
                return
            payload = discovery_payload(topics, self._version, self._features_now())
            if connected and (force or self._owned != wanted or self._sent != payload):
                link.publish(wanted, payload, retain=True)
                self._sent = payload
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
