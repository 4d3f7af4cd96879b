"""Home Assistant's side of discovery, for tests: its template engine, the entities the agent must
offer, and the size limit of its recorder. Shared by the pure document tests and the broker tests.
"""

from __future__ import annotations

import json

from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent.ops.homeassistant import ALERT_KINDS, Features

ENV = ImmutableSandboxedEnvironment()   # Home Assistant templates are sandboxed Jinja2


def render(template: str, payload: dict | None = None, **variables) -> str:
    """Render a template the way Home Assistant's MQTT integration does (value_json = the payload)."""
    return ENV.from_string(template).render(value_json=payload, **variables).strip()


ALL = Features(microphone=True, telemetry=True, temperature=True, wake_models=("okay_nabu", "alexa"))
OPTIONAL = {"vad", "speech", "listening", "wake", "jobs_failed", "jobs_rejected", "inbox_waiting", "outbox_queued",
            "memory_used", "temperature"}
ALWAYS = {"transcript": "event", "last_transcript": "sensor", "last_summary": "sensor", "memory_level": "sensor",
          "jobs_running": "sensor", "started": "sensor", "paused": "binary_sensor", "pause": "button",
          "resume": "button", "health": "binary_sensor", "restart": "button",
          **{f"{kind}_alert": "binary_sensor" for kind in ALERT_KINDS}}
RECORDER_ATTRS_MAX = 16 * 1024   # Home Assistant's recorder stores no attributes above this (and warns)


def attributes_size(attributes: dict) -> int:
    """Bytes of the attributes as the recorder stores them (JSON, UTF-8)."""
    return len(json.dumps(attributes, ensure_ascii=False, separators=(",", ":")).encode())
