"""Which settings a `config/set` over MQTT may touch: the schema's `remote` metadata, applied.

Anyone allowed to publish a request can send `config/set`, so the overlay it writes must never
name a program, a file, a folder, a URL, a host or a credential that the device then uses (the
threat model is in docs/security.md). Each field of `agent.settings` declares its scope once:
local only (the default), DEVICE (the device's own request topic) or FLEET (also the fleet-wide
topic). Everything here is derived from that metadata, so a new setting is local until someone
decides otherwise, and the list shown to users can never drift from what is enforced.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any

from agent.config.problems import join_path
from agent.settings import DEVICE, FLEET, Settings

_ALLOWED = {DEVICE: (DEVICE, FLEET), FLEET: (FLEET,)}

#: Values only the local file may choose for a key MQTT may otherwise change: `fleet` hands
#: every recording the device hears to other machines (agent/engines/fleet.py).
LOCAL_ONLY_VALUES = {"transcriber.engine": ("fleet",)}


def scopes() -> dict[str, str | None]:
    """Every leaf path of the schema with its scope (None = local file only)."""
    return dict(_scopes(Settings))


@functools.lru_cache(maxsize=None)
def _scopes(cls: type, prefix: str = "") -> tuple[tuple[str, str | None], ...]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, str | None]] = []
    for f in dataclasses.fields(cls):
        path = join_path(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_scopes(hints[f.name], path))
        else:
            out.append((path, f.metadata.get("remote")))
    return tuple(out)


def tunable(scope: str) -> list[str]:
    """Leaf paths a request on `scope` (DEVICE or FLEET) may change, in schema order."""
    return [path for path, s in _scopes(Settings) if s in _ALLOWED[scope]]


def forbidden(partial: Mapping, scope: str) -> list[str]:
    """Key paths in `partial` that a request on `scope` may not set.

    Unknown keys are not listed: validation refuses them with a "did you mean". A whole section
    replaced by a scalar or null is forbidden when the section holds any key the scope may not
    change, since validation would otherwise be the only guard.
    """
    return _walk(Settings, partial, "", _ALLOWED[scope])


def _walk(cls: type, data: Mapping, prefix: str, allowed: tuple[str, ...]) -> list[str]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad: list[str] = []
    for key, value in data.items():
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            continue
        path = join_path(prefix, key)
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if isinstance(value, Mapping):
                bad.extend(_walk(kind, value, path, allowed))
            elif any(s not in allowed for _p, s in _scopes(kind, path)):
                bad.append(path)
        elif f.metadata.get("remote") not in allowed or value in LOCAL_ONLY_VALUES.get(path, ()):
            bad.append(path)
    return bad


def strip_forbidden(overlay: Mapping, scope: str = DEVICE) -> tuple[dict, list[str]]:
    """The overlay without the keys `scope` may not set, and their paths.

    An overlay written by an older version (which accepted any key) may hold a command or a
    folder an attacker chose; loading drops those keys rather than trusting the file.
    """
    dropped = forbidden(overlay, scope)
    return _without(overlay, set(dropped), ""), dropped


def strip_paths(overlay: Mapping, paths: list[str]) -> dict:
    """The overlay without these key paths (a section path drops the whole section)."""
    return _without(overlay, set(paths), "")


def _without(data: Mapping, drop: set[str], prefix: str) -> dict:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = join_path(prefix, str(key))
        if path in drop:
            continue
        if isinstance(value, Mapping):
            kept = _without(value, drop, path)
            if kept or not value:   # a section emptied by the drop goes too
                out[key] = kept
        else:
            out[key] = value
    return out
