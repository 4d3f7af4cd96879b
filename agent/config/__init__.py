"""Turn YAML into `agent.settings.Settings`, reporting every problem at once with its key path and line.

A device in a drawer gets no second chance at a clear error message, so validation never stops at
the first problem: the whole document is walked and every mistake is collected into one
`ConfigError`. The schema (types, ranges, choices, secrets, environment variables, paths) lives in
the field metadata of `agent.settings`; the modules below only interpret it.

This module is the public API. The work is split by job: `agent.config.problems` (Problem,
ConfigError), `agent.config.yaml_lines` (YAML with line numbers), `agent.config.parse` (the schema
interpreter, `${VAR}` interpolation, paths) and `agent.config.checks` (rules across fields).

`agent.config.store` (base file + remote overlay, cached by file signature) and
`agent.config.remote` (which keys MQTT may change) build on this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.parse import Parser, interpolate, resolve_path, type_name
from agent.config.problems import REDACTED, ConfigError, Problem
from agent.config.redact import redact_value
from agent.config.yaml_lines import load_yaml_text
from agent.settings import Settings

__all__ = [
    "ConfigError",
    "Problem",
    "changed_sections",
    "deep_merge",
    "interpolate",
    "load_yaml_text",
    "parse_settings",
    "resolve_path",
    "revision",
    "settings_to_dict",
]


# --- Small public helpers ---------------------------------------------------------------------


def deep_merge(base: Mapping, overlay: Mapping) -> dict:
    """A new dict: nested mappings merge key by key, anything else in `overlay` replaces."""
    merged = {key: _copy(value) for key, value in base.items()}
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _copy(value: Any) -> Any:
    """Copy containers so the merged dict never aliases (and later mutates) its inputs."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def settings_to_dict(settings: Any, *, redact: bool = True) -> dict:
    """Plain JSON-able dict in schema order; unless redact=False, secrets that are set become '***'
    and so do credentials inside other values (agent.config.redact: command lines, URLs)."""
    result: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            result[f.name] = settings_to_dict(value, redact=redact)
        elif redact and f.metadata.get("secret") and value is not None:
            result[f.name] = REDACTED
        elif redact:
            result[f.name] = redact_value(value)
        elif isinstance(value, list):
            result[f.name] = list(value)
        else:
            result[f.name] = value
    return result


def revision(settings: Settings, key: bytes = b"") -> str:
    """Short content hash, so a fleet dashboard can tell which devices run the same config.

    The revision is published, and it must change when a secret changes; so secrets enter it only
    through an HMAC with a per-device `key` that is never published. Otherwise anyone who can read
    `<root>/config` could test password guesses offline against the revision.
    """
    public = _canonical(settings_to_dict(settings, redact=True))
    secret = hmac.new(key, _canonical(settings_to_dict(settings, redact=False)), hashlib.sha256).digest()
    return hashlib.sha256(public + secret).hexdigest()[:12]


def _canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def changed_sections(old: Settings, new: Settings) -> list[str]:
    """Top-level fields that differ, so the app restarts only the parts a reload touched."""
    return [f.name for f in dataclasses.fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]


# --- Validation -------------------------------------------------------------------------------


def parse_settings(
    data: Mapping,
    *,
    lines: Mapping[str, int] | None = None,
    base_dir: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate a whole document and build Settings; raise one ConfigError holding every problem."""
    parser = Parser(
        lines=dict(lines or {}),
        base_dir=Path(base_dir) if base_dir is not None else Path.cwd(),
        environ=os.environ if environ is None else environ,
    )
    if not isinstance(data, Mapping):
        raise ConfigError([Problem("", f"top level must be a mapping of keys, not {type_name(data)}")])
    settings = parser.section(Settings, data, "")
    if parser.problems:
        # File order reads best next to the file; the sort is stable, so line-less ones keep schema order.
        raise ConfigError(sorted(parser.problems, key=lambda p: math.inf if p.line is None else p.line))
    return settings

