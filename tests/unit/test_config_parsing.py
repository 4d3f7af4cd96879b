"""agent.config: YAML -> Settings, every problem at once, interpolation, secrets, merging."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agent.config import (
    ConfigError,
    Problem,
    changed_sections,
    deep_merge,
    load_yaml_text,
    parse_settings,
    settings_to_dict,
)
from agent.settings import Settings


def parse(text: str, *, base_dir: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    data, lines = load_yaml_text(textwrap.dedent(text))
    return parse_settings(data, lines=lines, base_dir=base_dir or Path("/base"), environ=environ or {})


def problems(text: str, **kwargs: Any) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(text, **kwargs)
    return info.value.problems


def only_problem(text: str, **kwargs: Any) -> Problem:
    found = problems(text, **kwargs)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_empty_mapping_gives_defaults(tmp_path: Path) -> None:
    settings = parse_settings({}, base_dir=tmp_path, environ={})
    assert settings.mqtt.port == 1883
    assert settings.mqtt.protocol == "5"
    assert settings.mqtt.host is None
    assert settings.transcriber.whisper_cpp.extra_args == []
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", settings.device_id)
    # default relative paths resolve too, so the runtime never depends on the working directory
    assert settings.state_dir == str(tmp_path / "state")
    assert settings.inbox.path == str(tmp_path / "inbox")


def test_empty_file_and_null_document_are_empty_mappings() -> None:
    assert load_yaml_text("") == ({}, {})
    assert load_yaml_text("# only a comment\n") == ({}, {})
    assert load_yaml_text("~\n") == ({}, {})


def test_values_are_typed_and_sections_merge_with_defaults() -> None:
    settings = parse("""
        device_id: kitchen
        mqtt:
          host: broker.lan
          port: 8883
          protocol: 3.1.1
          tls:
            enabled: true
        jobs:
          timeout_s: 10
        listen:
          device: 2
        """)
    assert settings.device_id == "kitchen"
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.protocol) == ("broker.lan", 8883, "3.1.1")
    assert settings.mqtt.tls.enabled and settings.mqtt.keepalive_s == 60
    assert settings.jobs.timeout_s == 10.0 and isinstance(settings.jobs.timeout_s, float)
    assert settings.listen.device == 2


@pytest.mark.parametrize("raw, expected", [("5", "5"), ("'5'", "5"), ("3.1.1", "3.1.1")])
def test_protocol_accepts_yaml_int_5(raw: str, expected: str) -> None:
    assert parse(f"mqtt:\n  protocol: {raw}\n").mqtt.protocol == expected


@pytest.mark.parametrize("device", ["hw:1,0", "2", 0])
def test_str_or_int_field(device: Any) -> None:
    assert parse(f"listen:\n  device: {json.dumps(device)}\n").listen.device == device


CASES = [
    # unknown keys, with a suggestion at every level
    ("mqtt:\n  prot: 1883\n", "mqtt.prot", "unknown key; did you mean 'port'?", 2),
    ("mqtt:\n  tls:\n    enabeld: true\n", "mqtt.tls.enabeld", "unknown key; did you mean 'enabled'?", 3),
    ("log_levl: INFO\n", "log_levl", "unknown key; did you mean 'log_level'?", 1),
    ("zzz: 1\n", "zzz", "unknown key; valid keys: device_id, state_dir", 1),
    # types
    ("mqtt:\n  port: '1883'\n", "mqtt.port", "must be an integer", 2),
    ("mqtt:\n  port: true\n", "mqtt.port", "must be an integer", 2),
    ("mqtt:\n  port: 1883.5\n", "mqtt.port", "must be an integer", 2),
    ("mqtt:\n  port: 1883.0\n", "mqtt.port", "must be an integer", 2),
    ("mqtt:\n  port: null\n", "mqtt.port", "must be an integer, not null", 2),
    ("jobs:\n  timeout_s: false\n", "jobs.timeout_s", "must be a number", 2),
    ("jobs:\n  timeout_s: ten\n", "jobs.timeout_s", "must be a number", 2),
    ("memory:\n  min_available_mb: .inf\n", "memory.min_available_mb", "must be a number or null", 2),
    ("inbox:\n  enabled: 1\n", "inbox.enabled", "must be true or false", 2),
    ("inbox:\n  enabled: 'true'\n", "inbox.enabled", "must be true or false", 2),
    ("summarizer:\n  prompt: 12\n", "summarizer.prompt", "must be a string", 2),
    ("mqtt:\n  host: 12\n", "mqtt.host", "must be a string or null", 2),
    ("listen:\n  device: 1.5\n", "listen.device", "must be a string, an integer or null", 2),
    ("listen:\n  device: true\n", "listen.device", "must be a string, an integer or null", 2),
    # lists
    ("mqtt:\n  allowed_commands: ping\n", "mqtt.allowed_commands", "must be a list of strings or null", 2),
    ("mqtt:\n  allowed_commands:\n    - ping\n    - status\n    - 3\n", "mqtt.allowed_commands[2]",
     "must be a string", 5),
    ("transcriber:\n  whisper_cpp:\n    extra_args: null\n", "transcriber.whisper_cpp.extra_args",
     "must be a list of strings, not null", 3),
    # ranges
    ("mqtt:\n  port: 0\n", "mqtt.port", "must be at least 1", 2),
    ("mqtt:\n  port: 70000\n", "mqtt.port", "must be at most 65535", 2),
    ("mqtt:\n  reconnect_min_s: 0.05\n", "mqtt.reconnect_min_s", "must be at least 0.1", 2),
    ("memory:\n  min_available_mb: -1\n", "memory.min_available_mb", "must be at least 0", 2),
    # choices
    ("log_level: TRACE\n", "log_level", "must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'", 1),
    ("mqtt:\n  protocol: 4\n", "mqtt.protocol", "must be one of '5', '3.1.1'", 2),
    ("mqtt:\n  protocol: 3.1\n", "mqtt.protocol", "must be one of '5', '3.1.1'", 2),
    ("listen:\n  sample_rate: 22050\n", "listen.sample_rate", "must be one of 8000, 16000, 32000, 44100, 48000", 2),
    ("transcriber:\n  engine: whisper\n", "transcriber.engine", "must be one of 'pocketsphinx'", 2),
    # sections
    ("mqtt: 5\n", "mqtt", "must be a mapping of keys, not an integer", 1),
    ("mqtt:\n", "mqtt", "must be a mapping of keys, not null", 1),
    ("mqtt:\n  tls: [a]\n", "mqtt.tls", "must be a mapping of keys, not a list", 2),
    # rules across fields
    ("device_id: kitchen pi\n", "device_id", "must be 1 to 64 characters", 1),
    (f"device_id: {'a' * 65}\n", "device_id", "must be 1 to 64 characters", 1),
    ("device_id: ''\n", "device_id", "must be 1 to 64 characters", 1),
    ("mqtt:\n  topic_prefix: ''\n", "mqtt.topic_prefix", "must not be empty", 2),
    ("mqtt:\n  topic_prefix: a/+/b\n", "mqtt.topic_prefix", "must not contain '+', '#'", 2),
    ("mqtt:\n  topic_prefix: voice/#\n", "mqtt.topic_prefix", "must not contain '+', '#'", 2),
    ("mqtt:\n  topic_prefix: /voice\n", "mqtt.topic_prefix", "must not start or end with '/'", 2),
    ("mqtt:\n  topic_prefix: voice/\n", "mqtt.topic_prefix", "must not start or end with '/'", 2),
    ("mqtt:\n  topic_prefix: a//b\n", "mqtt.topic_prefix", "must not contain empty levels", 2),
    ("mqtt:\n  tls:\n    cert_file: c.pem\n", "mqtt.tls.key_file", "is required when cert_file is set", 2),
    ("mqtt:\n  tls:\n    key_file: k.pem\n", "mqtt.tls.cert_file", "is required when key_file is set", 2),
    ("memory:\n  warn_percent: 90\n  critical_percent: 90\n", "memory.critical_percent",
     "must be greater than warn_percent (90)", 3),
    ("memory:\n  critical_percent: 50\n", "memory.critical_percent", "must be greater than warn_percent (80)", 2),
    ("mqtt:\n  reconnect_min_s: 30\n  reconnect_max_s: 10\n", "mqtt.reconnect_max_s",
     "must be at least reconnect_min_s (30)", 3),
    ("homeassistant:\n  discovery_prefix: ha/#\n", "homeassistant.discovery_prefix", "must not contain", 2),
    ("fleet:\n  group: a/b\n", "fleet.group", "must be a non-empty name", 2),
    ("inbox:\n  path: ''\n", "inbox.path", "must not be empty", 2),
]


@pytest.mark.parametrize("text, path, message, line", CASES, ids=[c[1] + ":" + c[2][:24] for c in CASES])
def test_each_kind_of_problem(text: str, path: str, message: str, line: int) -> None:
    problem = only_problem(text)
    assert problem.path == path
    assert problem.message.startswith(message)
    assert problem.line == line


def test_valid_edge_values_pass() -> None:
    settings = parse(f"""
        device_id: {'a' * 64}
        mqtt:
          port: 65535
          topic_prefix: home/voice
          tls: {{cert_file: c.pem, key_file: k.pem}}
        memory:
          warn_percent: 90
          critical_percent: 90.5
        """)
    assert settings.mqtt.port == 65535
    assert settings.mqtt.tls.cert_file == "/base/c.pem"


def test_all_problems_are_collected_at_once_in_file_order() -> None:
    text = """\
        device_id: "bad id"
        mqtt:
          prot: 1
          port: 0
          protocol: 4
          allowed_commands: [ping, 7]
          tls:
            cert_file: c.pem
        vad: null
        memory:
          critical_percent: 10
        jobs:
          max_concurrent: many
        """
    found = problems(text)
    assert [(p.path, p.line) for p in found] == [
        ("device_id", 1),
        ("mqtt.prot", 3),
        ("mqtt.port", 4),
        ("mqtt.protocol", 5),
        ("mqtt.allowed_commands[1]", 6),
        ("mqtt.tls.key_file", 7),
        ("vad", 9),
        ("memory.critical_percent", 11),
        ("jobs.max_concurrent", 13),
    ]
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).splitlines() == [str(p) for p in found]


def test_config_error_pickles_with_its_problems() -> None:
    import pickle

    error = ConfigError([Problem("mqtt.port", "must be at most 65535", 70000, 3)])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems and str(copy) == str(error)


def test_problem_text() -> None:
    assert str(Problem("mqtt.port", "must be at most 65535", 70000, 12)) == \
        "line 12: mqtt.port = 70000: must be at most 65535"
    assert str(Problem("mqtt.host", "must be a string", ["a"])) == 'mqtt.host = ["a"]: must be a string'
    assert str(Problem("mqtt.prot", "unknown key")) == "mqtt.prot: unknown key"
    assert str(Problem("", "invalid YAML", line=3)) == "line 3: invalid YAML"
    assert str(Problem("mqtt.password", "must be a string", "***")) == "mqtt.password = ***: must be a string"
    long = str(Problem("x", "m", "y" * 500, 1))
    assert len(long) < 120 and "\n" not in long


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_text("mqtt:\n  port: 1883\n  host: [unclosed\nlog_level: INFO\n", "cfg.yaml")
    (problem,) = info.value.problems
    assert "invalid YAML in cfg.yaml" in problem.message
    assert problem.line is not None and problem.line >= 3


def test_yaml_duplicate_keys_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_text("mqtt:\n  port: 1\n  port: 2\n")
    assert [(p.path, p.message, p.line) for p in info.value.problems] == [("mqtt.port", "duplicate key", 3)]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_mapping(text: str) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml_text(text)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_settings(yaml.safe_load(text), environ={})


def test_unsafe_yaml_tags_are_refused() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml_text("x: !!python/object/apply:os.system ['true']\n")


def test_lines_map_includes_list_items_and_nested_keys() -> None:
    _, lines = load_yaml_text("a:\n  b:\n    - x\n    - y\n  c: 1\n")
    assert lines == {"a": 1, "a.b": 2, "a.b[0]": 3, "a.b[1]": 4, "a.c": 5}


def test_interpolation() -> None:
    settings = parse("""
        mqtt:
          host: ${HOST}
          port: ${PORT}
          topic_prefix: ${PREFIX:-voice}/${ROOM:-hall}
          remote_config: ${REMOTE}
          allowed_commands: ["${CMD}", "lit$${NOT}"]
        memory:
          min_available_mb: ${MIN_MB:-}
          warn_percent: ${WARN}
        """, environ={"HOST": "broker", "PORT": "8883", "ROOM": "", "REMOTE": "false", "CMD": "ping",
                      "WARN": "70.5"})
    assert settings.mqtt.host == "broker"
    assert settings.mqtt.port == 8883
    assert settings.mqtt.topic_prefix == "voice/hall"  # ':-' also applies to an empty variable
    assert settings.mqtt.remote_config is False
    assert settings.mqtt.allowed_commands == ["ping", "lit${NOT}"]
    assert settings.memory.min_available_mb is None
    assert settings.memory.warn_percent == 70.5


def test_interpolation_missing_variable_is_a_problem_at_the_key() -> None:
    found = problems("""\
        mqtt:
          host: ${NOPE}
          allowed_commands: [ping, "${ALSO_NOPE}"]
        """)
    assert [(p.path, p.message, p.line) for p in found] == [
        ("mqtt.host", "environment variable NOPE is not set", 2),
        ("mqtt.allowed_commands[1]", "environment variable ALSO_NOPE is not set", 3),
    ]


def test_interpolated_text_must_still_fit_the_type() -> None:
    problem = only_problem("mqtt:\n  port: ${PORT}\n", environ={"PORT": "eighty"})
    assert (problem.path, problem.message, problem.value) == ("mqtt.port", "must be an integer", "eighty")
    problem = only_problem("mqtt:\n  port: ${PORT}\n", environ={"PORT": "99999"})
    assert problem.message == "must be at most 65535"


def test_secrets_from_environment() -> None:
    environ = {"VOICE_AGENT_MQTT_PASSWORD": "pw-env", "OPENAI_API_KEY": "sk-env", "ANTHROPIC_API_KEY": "ant-env",
               "VOICE_AGENT_MQTT_USERNAME": "agent"}
    settings = parse("summarizer:\n  openai:\n    api_key: null\n", environ=environ)
    assert settings.mqtt.password == "pw-env"
    assert settings.mqtt.username == "agent"
    assert settings.transcriber.openai.api_key == "sk-env"
    assert settings.summarizer.openai.api_key == "sk-env"
    assert settings.summarizer.anthropic.api_key == "ant-env"
    # a value in the file wins over the environment
    assert parse("mqtt:\n  password: pw-file\n", environ=environ).mqtt.password == "pw-file"
    # an empty variable counts as unset
    assert parse("{}", environ={"OPENAI_API_KEY": ""}).transcriber.openai.api_key is None


def test_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    settings = parse("mqtt:\n  password_file: pw\n", base_dir=tmp_path)
    assert settings.mqtt.password == "s3cret"
    assert settings.mqtt.password_file == str(tmp_path / "pw")
    # a password given directly (or by environment) wins, and the file is not even read
    settings = parse("mqtt:\n  password_file: missing\n", base_dir=tmp_path,
                     environ={"VOICE_AGENT_MQTT_PASSWORD": "env"})
    assert settings.mqtt.password == "env"


def test_password_file_unreadable_or_empty(tmp_path: Path) -> None:
    problem = only_problem("mqtt:\n  password_file: missing\n", base_dir=tmp_path)
    assert (problem.path, problem.line) == ("mqtt.password_file", 2)
    assert problem.message.startswith("cannot read")
    (tmp_path / "empty").write_text("\n")
    assert only_problem("mqtt:\n  password_file: empty\n", base_dir=tmp_path).message == "is empty"


def test_paths_resolve_against_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = parse("""
        state_dir: ../var/state
        inbox:
          path: /srv/inbox
          processed_dir: ~/done
        transcriber:
          whisper_cpp:
            model: models/ggml.bin
            binary: whisper-cpp
        """, base_dir=tmp_path / "etc")
    assert settings.state_dir == str(tmp_path / "var" / "state")
    assert settings.inbox.path == "/srv/inbox"
    assert settings.inbox.processed_dir == str(tmp_path / "home" / "done")
    assert settings.inbox.failed_dir is None
    assert settings.transcriber.whisper_cpp.model == str(tmp_path / "etc" / "models" / "ggml.bin")
    assert settings.transcriber.whisper_cpp.binary == "whisper-cpp"  # not a path field: a name on PATH


SECRET = "hunter2-very-secret"


def test_redaction() -> None:
    settings = parse(f"mqtt:\n  password: {SECRET}\ntranscriber:\n  openai:\n    api_key: {SECRET}\n")
    redacted = settings_to_dict(settings)
    assert redacted["mqtt"]["password"] == "***"
    assert redacted["transcriber"]["openai"]["api_key"] == "***"
    assert redacted["summarizer"]["openai"]["api_key"] is None  # unset secrets stay null
    assert SECRET not in json.dumps(redacted)
    assert SECRET not in json.dumps(settings_to_dict(settings, redact=True))
    assert settings_to_dict(settings, redact=False)["mqtt"]["password"] == SECRET
    assert list(redacted) == [f.name for f in dataclasses.fields(Settings)]  # schema order


def test_secrets_never_appear_in_problems() -> None:
    found = problems(f"mqtt:\n  password: [{SECRET}]\n  pasword: {SECRET}\n  port: 0\n")
    text = "\n".join(str(p) for p in found)
    assert SECRET not in text and SECRET not in repr([p.value for p in found])
    assert "mqtt.password = ***: must be a string or null" in text
    assert "mqtt.pasword: unknown key; did you mean 'password'?" in text


def test_changed_sections() -> None:
    old = parse("device_id: a\n")
    assert changed_sections(old, parse("device_id: a\n")) == []
    new = parse("device_id: a\nmqtt:\n  tls:\n    insecure: true\njobs:\n  cache_size: 3\n")
    assert changed_sections(old, new) == ["mqtt", "jobs"]
    assert changed_sections(old, parse("device_id: b\n")) == ["device_id"]


def test_deep_merge() -> None:
    base = {"mqtt": {"port": 1, "tls": {"enabled": True}}, "x": [1, 2], "keep": 1}
    overlay = {"mqtt": {"tls": {"insecure": True}, "host": None}, "x": [3], "keep": {"now": "dict"}}
    merged = deep_merge(base, overlay)
    assert merged == {"mqtt": {"port": 1, "tls": {"enabled": True, "insecure": True}, "host": None},
                      "x": [3], "keep": {"now": "dict"}}
    assert base == {"mqtt": {"port": 1, "tls": {"enabled": True}}, "x": [1, 2], "keep": 1}
    merged["mqtt"]["tls"]["enabled"] = False
    merged["x"].append(4)
    assert base["mqtt"]["tls"]["enabled"] is True and overlay["x"] == [3]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)
json_dicts = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(json_dicts, json_dicts)
def test_deep_merge_properties(base: dict, overlay: dict) -> None:
    merged = deep_merge(base, overlay)
    assert deep_merge(merged, overlay) == merged  # idempotent
    assert deep_merge(base, {}) == base and deep_merge({}, overlay) == overlay
    for key, value in overlay.items():
        if not (isinstance(value, dict) and isinstance(base.get(key), dict)):
            assert merged[key] == value


schema_keys = [f.name for f in dataclasses.fields(Settings)] + ["port", "host", "tls", "enabled", "bogus"]
fuzz_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(schema_keys) | st.text(max_size=4), children, max_size=4),
    max_leaves=15,
)


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(schema_keys), fuzz_docs, max_size=6))
def test_parse_settings_never_crashes(doc: dict) -> None:
    """Whatever arrives (a remote config/set included), the answer is Settings or ConfigError."""
    try:
        parse_settings(doc, base_dir=Path("/base"), environ={})
    except ConfigError as exc:
        assert exc.problems and all("\n" not in str(p) for p in exc.problems)
