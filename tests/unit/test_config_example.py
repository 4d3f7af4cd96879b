"""config.example.yaml parses to the defaults and documents every key of the schema."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from agent.config import load_yaml_text, parse_settings
from agent.settings import Settings

from tests.support.paths import REPO


EXAMPLE = REPO / "config.example.yaml"


def schema_tree(cls: type) -> dict[str, Any]:
    """{key: subtree or None} for the whole schema, from the dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: schema_tree(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None
        for f in dataclasses.fields(cls)
    }


def key_tree(data: dict) -> dict[str, Any]:
    return {k: key_tree(v) if isinstance(v, dict) else None for k, v in data.items()}


def test_example_parses_to_the_defaults() -> None:
    data, lines = load_yaml_text(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    parsed = parse_settings(data, lines=lines, base_dir=EXAMPLE.parent, environ={})
    defaults = parse_settings({}, base_dir=EXAMPLE.parent, environ={})
    assert parsed == defaults


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data, _ = load_yaml_text(text)
    expected = schema_tree(Settings)
    del expected["device_id"]  # defaults to the hostname, so it is shown commented out
    assert key_tree(data) == expected
    assert re.search(r"^# device_id: \S+", text, re.MULTILINE)
    for env in ("VOICE_AGENT_MQTT_PASSWORD", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "${VAR}"):
        assert env in text
    assert re.search(r"^  host: null  # null = start a local Mosquitto", text, re.MULTILINE)
    # every key carries a comment: on the line above, or beside it
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*[a-z_]+:", line):
            assert "#" in line or lines[number - 1].strip().startswith("#"), line
