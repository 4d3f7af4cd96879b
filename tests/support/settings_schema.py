"""The settings schema read the way the remote-config guard reads it: which keys are local-only,
and the dataclass field (with its resolved type) behind a dotted key path.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from agent.config.remote import scopes
from agent.settings import Settings

LOCAL = sorted(path for path, scope in scopes().items() if scope is None)


def settings_field(path: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field behind a dotted key path such as "mqtt.host", and its resolved type."""
    cls: Any = Settings
    *sections, leaf = path.split(".")
    for name in sections:
        cls = typing.get_type_hints(cls)[name]
    return next(f for f in dataclasses.fields(cls) if f.name == leaf), typing.get_type_hints(cls)[leaf]
