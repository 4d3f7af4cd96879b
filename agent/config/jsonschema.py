"""The config file's JSON Schema, generated from the one schema (agent/settings.py).

Nothing here is written by hand per field: types come from the annotations (read the way the
parser reads them, `agent.config.parse._kind_of`), ranges, lengths and choices from `opt(min=,
max=, max_len=, choices=)` (the narrower bounds over MQTT as `x-remote-min` / `x-remote-max`),
descriptions from `doc`, defaults from the dataclasses. Secrets are `writeOnly` (an editor or a
UI must never show them back); who may change a key over MQTT is the custom keyword `x-remote`
("device", "fleet" or null = only the local file). Test-only engine choices are left out, as they
are of every message. `voice-agent schema` prints it, the agent publishes it
retained at `<root>/schema`, and docs/config.schema.json is this output (a test keeps it so).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from agent.config.parse import _kind_of
from agent.settings import Settings

SCHEMA_ID = "urn:voice-agent:config"   # names this schema; where to fetch it: docs/config.schema.json, <root>/schema
DIALECT = "https://json-schema.org/draft/2020-12/schema"
_JSON_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string"}


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a whole config file (every key optional: a missing one takes its default)."""
    return {"$schema": DIALECT, "$id": SCHEMA_ID, "title": "voice-agent configuration",
            **_section(Settings, "voice-agent configuration (agent/settings.py).")}


def _section(cls: type, doc: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            properties[f.name] = _section(annotation, f.metadata.get("doc", ""))
        else:
            properties[f.name] = _leaf(f, annotation)
    return {"type": "object", "description": doc, "additionalProperties": False, "properties": properties}


def _numeric_spellings(choices: tuple[Any, ...], kind: Any) -> list[Any]:
    """`protocol: 5` is a number in YAML that the parser reads as the choice "5": accepted here too."""
    if str not in kind.scalars:
        return []
    out: list[Any] = []
    for choice in choices:
        for number_type in (int, float):
            try:
                number = number_type(choice)
            except (TypeError, ValueError):
                continue
            if isinstance(choice, str) and str(number) == choice:
                out.append(number)
                break
    return out


def _leaf(f: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    meta = f.metadata
    kind = _kind_of(annotation)
    out: dict[str, Any] = {"description": meta["doc"]}
    types = [_JSON_TYPE[t] for t in kind.scalars]
    if kind.item is not None:
        types.append("array")
        out["items"] = {"type": [_JSON_TYPE[t] for t in kind.item.scalars]}
    if kind.optional:
        types.append("null")
    # `float` accepts integers too; "number" already does, so one type word each
    out["type"] = types[0] if len(types) == 1 else types
    if meta.get("choices"):
        out["enum"] = [*meta["choices"], *_numeric_spellings(meta["choices"], kind),
                       *([None] if kind.optional else [])]
    if meta.get("min") is not None:
        out["minimum"] = meta["min"]
    if meta.get("max") is not None:
        out["maximum"] = meta["max"]
    if meta.get("max_len") is not None:
        out["maxItems" if kind.item is not None else "maxLength"] = meta["max_len"]
    if meta.get("item_max_len") is not None and kind.item is not None:
        out["items"]["maxLength"] = meta["item_max_len"]
    for bound in ("remote_min", "remote_max"):   # narrower over MQTT (agent/config/remote_limits.py)
        if meta.get(bound) is not None:
            out[f"x-{bound.replace('_', '-')}"] = meta[bound]
    if f.default is not dataclasses.MISSING:
        out["default"] = f.default
    elif f.default_factory is not dataclasses.MISSING and f.name != "device_id":   # device_id: this host's
        out["default"] = f.default_factory()
    if meta.get("secret"):
        out["writeOnly"] = True
    if meta.get("env"):
        out["x-env"] = meta["env"]
    if meta.get("path"):
        out["x-path"] = True
    out["x-remote"] = meta.get("remote")
    return out
