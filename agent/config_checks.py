"""Rules that involve more than one field, run by the parser after each section's leaves.

The schema metadata in `agent.settings` describes one field at a time; what it cannot say
(a cert without its key, critical below warn, a readable password file, a literal MQTT topic)
lives here, keyed by the settings class it applies to.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from agent.config_problems import show_number
from agent.settings import (
    FleetSettings,
    HomeAssistantSettings,
    MemorySettings,
    MQTTSettings,
    Settings,
    TLSSettings,
)

_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Add = Callable[..., None]
"""``add(key, message, value=None)``: report a problem with a key of the section being checked."""


def _check_settings(values: dict[str, Any], add: Add) -> None:
    device_id = values.get("device_id")
    if isinstance(device_id, str) and not _DEVICE_ID_RE.match(device_id):
        add("device_id", "must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'", device_id)


def _check_topic(key: str, topic: Any, add: Add) -> None:
    """A topic prefix is a literal topic: no wildcards, no empty levels, no stray slashes."""
    if not isinstance(topic, str):
        return
    if not topic:
        add(key, "must not be empty", topic)
    elif "+" in topic or "#" in topic or "\0" in topic:
        add(key, "must not contain '+', '#' or NUL", topic)
    elif topic.startswith("/") or topic.endswith("/"):
        add(key, "must not start or end with '/'", topic)
    elif "//" in topic:
        add(key, "must not contain empty levels ('//')", topic)


def _check_mqtt(values: dict[str, Any], add: Add) -> None:
    _check_topic("topic_prefix", values.get("topic_prefix"), add)
    low, high = values.get("reconnect_min_s"), values.get("reconnect_max_s")
    if low is not None and high is not None and high < low:
        add("reconnect_max_s", f"must be at least reconnect_min_s ({show_number(low)})", high)
    password_file = values.get("password_file")
    if "password" in values and values["password"] is None and isinstance(password_file, str):
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            add("password_file", f"cannot read: {getattr(exc, 'strerror', None) or exc}", password_file)
            values.pop("password_file")
            return
        if not password:
            add("password_file", "is empty", password_file)
            values.pop("password_file")
            return
        values["password"] = password


def _check_tls(values: dict[str, Any], add: Add) -> None:
    cert, key = values.get("cert_file"), values.get("key_file")
    if "cert_file" in values and "key_file" in values:
        if cert is not None and key is None:
            add("key_file", "is required when cert_file is set")
        if key is not None and cert is None:
            add("cert_file", "is required when key_file is set")


def _check_memory(values: dict[str, Any], add: Add) -> None:
    warn, critical = values.get("warn_percent"), values.get("critical_percent")
    if warn is not None and critical is not None and critical <= warn:
        add("critical_percent", f"must be greater than warn_percent ({show_number(warn)})", critical)


def _check_homeassistant(values: dict[str, Any], add: Add) -> None:
    _check_topic("discovery_prefix", values.get("discovery_prefix"), add)


def _check_fleet(values: dict[str, Any], add: Add) -> None:
    group = values.get("group")
    if isinstance(group, str) and (not group or any(c in group for c in "/+#\0")):
        add("group", "must be a non-empty name without '/', '+' or '#'", group)


CROSS_CHECKS: Mapping[type, Callable[[dict[str, Any], Add], None]] = types.MappingProxyType({
    Settings: _check_settings,
    MQTTSettings: _check_mqtt,
    TLSSettings: _check_tls,
    MemorySettings: _check_memory,
    HomeAssistantSettings: _check_homeassistant,
    FleetSettings: _check_fleet,
})
