"""The config JSON Schema (agent/config/jsonschema.py) against the agent's own parser.

Schema-driven: every leaf of the generated schema gets a value of the wrong type, and every bound
it declares (minimum, maximum, enum) a value just outside it; the schema and parse_settings must
both refuse each one, at that key. New bounds in agent/settings.py flow in without a new test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Iterator

import jsonschema
import pytest

from agent.config import ConfigError, load_yaml_text, parse_settings
from agent.config.jsonschema import config_schema
from agent.config.remote import scopes
from tests.support.paths import REPO

SHIPPED = ("config.example.yaml", "config.pi.yaml", "config.demo.yaml")
SCHEMA = config_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def leaves(node: dict[str, Any] = SCHEMA, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in node["properties"].items():
        path = f"{prefix}{name}"
        if child.get("type") == "object":
            yield from leaves(child, path + ".")
        else:
            yield path, child


def nested(path: str, value: Any) -> dict[str, Any]:
    *sections, leaf = path.split(".")
    doc: dict[str, Any] = {leaf: value}
    for name in reversed(sections):
        doc = {name: doc}
    return doc


def out_of_range(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """A wrong type for every leaf, and a value just outside each bound it declares."""
    cases: list[tuple[str, Any]] = [("wrong type", {"not": "a scalar"})]
    if "minimum" in spec:
        cases.append(("below minimum", spec["minimum"] - 1))
    if "maximum" in spec:
        cases.append(("above maximum", spec["maximum"] + 1))
    if "maxLength" in spec:
        cases.append(("too long", "x" * (spec["maxLength"] + 1)))
    if "maxItems" in spec:
        cases.append(("too many items", ["x"] * (spec["maxItems"] + 1)))
    if "enum" in spec:
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        cases.append(("not a choice", "not-a-choice" if "string" in types else 12345))
    return cases


CASES = [pytest.param(path, value, id=f"{path}: {why}")
         for path, spec in leaves() for why, value in out_of_range(spec)]


def test_the_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate_and_name_the_schema(name: str) -> None:
    text = (REPO / name).read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# yaml-language-server: $schema=./docs/config.schema.json"
    data, _ = load_yaml_text(text, name)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in VALIDATOR.iter_errors(data)]
    assert errors == []


def test_the_shipped_schema_file_is_the_generated_one() -> None:
    shipped = json.loads((REPO / "docs/config.schema.json").read_text(encoding="utf-8"))
    assert shipped == SCHEMA, "docs/config.schema.json is stale: run `voice-agent schema > docs/config.schema.json`"


def test_voice_agent_schema_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "agent", "schema"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == SCHEMA


def test_every_field_is_in_the_schema_with_its_scope_and_secrets_are_write_only() -> None:
    found = dict(leaves())
    assert {path: spec["x-remote"] for path, spec in found.items()} == scopes()
    secret = {path for path, spec in found.items() if spec.get("writeOnly")}
    assert secret == {"mqtt.password", "transcriber.openai.api_key", "summarizer.openai.api_key",
                      "summarizer.anthropic.api_key"}
    assert all(spec["description"] for spec in found.values())


def test_defaults_validate() -> None:
    defaults = {path: spec["default"] for path, spec in leaves() if "default" in spec}
    for path, value in defaults.items():
        assert list(VALIDATOR.iter_errors(nested(path, value))) == [], path


@pytest.mark.parametrize(("path", "value"), CASES)
def test_out_of_range_is_refused_by_the_schema_and_the_parser(path: str, value: Any) -> None:
    doc = nested(path, value)
    assert not VALIDATOR.is_valid(doc), f"the schema accepts {path}={value!r}"
    with pytest.raises(ConfigError) as refused:
        parse_settings(doc, environ={})
    assert any(p.path == path for p in refused.value.problems), [str(p) for p in refused.value.problems]
