"""agent.config / agent.config.store: YAML -> Settings, every problem at once, the live store."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
import time
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agent.config import store as config_store
from agent.config.store import ConfigStore, RemoteForbidden
from agent.settings import DEVICE, FLEET
from agent.config import (
    ConfigError,
    Problem,
    changed_sections,
    deep_merge,
    load_yaml_text,
    parse_settings,
    revision,
    settings_to_dict,
)
from agent.settings import Settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"


# --- helpers ----------------------------------------------------------------------------------


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


def write(path: Path, text: str, *, mtime_ns: int | None = None) -> None:
    """Write and force a distinct mtime: coarse filesystem timestamps must not hide an edit."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    if mtime_ns is None:
        mtime_ns = max(previous + 1_000_000_000, time.time_ns())
    os.utime(path, ns=(mtime_ns, mtime_ns))


def schema_tree(cls: type) -> dict[str, Any]:
    """{key: subtree or None} for the whole schema, from the dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: schema_tree(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None
        for f in dataclasses.fields(cls)
    }


def key_tree(data: dict) -> dict[str, Any]:
    return {k: key_tree(v) if isinstance(v, dict) else None for k, v in data.items()}


# --- defaults ---------------------------------------------------------------------------------


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


# --- one problem of each kind, with its path and line -----------------------------------------

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
    ("transcriber:\n  language: 12\n", "transcriber.language", "must be a string", 2),
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


# --- environment ------------------------------------------------------------------------------


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


# --- redaction, revision, diff ----------------------------------------------------------------

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


def test_revision_is_stable_and_changes(tmp_path: Path) -> None:
    text = "device_id: dev1\nstate_dir: /var/lib/voice\nmqtt:\n  password: a\n"
    first = parse(text)
    rev = revision(first)
    assert re.fullmatch(r"[0-9a-f]{12}", rev)
    assert revision(parse(text)) == rev
    assert revision(parse(text.replace("password: a", "password: b"))) != rev  # secrets count (unredacted)
    # ...but only through the per-device key: without it a published revision cannot test a guess
    assert revision(first, b"device-key") != rev
    assert revision(parse(text.replace("password: a", "password: b")), b"device-key") != revision(first, b"device-key")
    assert revision(parse(text + "jobs:\n  cache_size: 1\n")) != rev
    code = ("import sys; from pathlib import Path; from agent.config import *; "
            "d, l = load_yaml_text(sys.argv[1]); "
            "print(revision(parse_settings(d, base_dir=Path('/base'), environ={})))")
    other = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, check=True,
                           cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == rev


def test_changed_sections() -> None:
    old = parse("device_id: a\n")
    assert changed_sections(old, parse("device_id: a\n")) == []
    new = parse("device_id: a\nmqtt:\n  tls:\n    insecure: true\njobs:\n  cache_size: 3\n")
    assert changed_sections(old, new) == ["mqtt", "jobs"]
    assert changed_sections(old, parse("device_id: b\n")) == ["device_id"]


# --- deep_merge -------------------------------------------------------------------------------


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


# --- ConfigStore ------------------------------------------------------------------------------

BASE = textwrap.dedent("""\
    device_id: dev1
    state_dir: state
    mqtt:
      host: broker.lan
      port: 1883
    memory:
      warn_percent: 80
    """)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir()
    write(path, BASE)
    return path


def test_store_loads_relative_to_config_file(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    settings = store.load()
    assert settings.state_dir == str(cfg.parent / "state")
    assert store.overlay_path == cfg.parent / "state" / "config-overlay.yaml"
    assert store.settings is settings
    assert store.revision == revision(settings, store.revision_key)
    key_file = cfg.parent / "state" / ".revision-key"
    assert key_file.stat().st_mode & 0o077 == 0 and len(key_file.read_bytes()) == 32
    assert ConfigStore(cfg, environ={}).revision == store.revision   # stable across restarts
    assert store.effective() == settings_to_dict(settings)
    assert ConfigStore is config_store.ConfigStore


def test_store_revision_answers_for_the_settings_it_read(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread still hashing the settings from before a change must not hand its revision to a
    caller that asked after it (seen in CI: `config/reset` answered the overlay's revision). The
    other thread is made to store its result right after this caller's first write to the store."""
    hashing, finish = threading.Event(), threading.Event()
    real = config_store.revision
    main = threading.current_thread()
    armed = False

    class Store(ConfigStore):
        def __setattr__(self, name: str, value: object) -> None:
            super().__setattr__(name, value)
            if armed and threading.current_thread() is main:
                finish.set()
                stale.join(5)

    store = Store(cfg, environ={})
    store.set_overlay({"jobs": {"max_concurrent": 2}})
    before = store.settings

    def held_for_old(settings, key):   # e.g. the state publisher, hashing what it read earlier
        if settings is before:
            hashing.set()
            finish.wait(5)
        return real(settings, key)

    monkeypatch.setattr(config_store, "revision", held_for_old)
    stale = threading.Thread(target=lambda: store.revision)
    stale.start()
    assert hashing.wait(5)
    after = store.reset_overlay()
    armed = True
    assert store.revision == real(after, store.revision_key) != real(before, store.revision_key)
    armed = False
    assert not stale.is_alive()


def test_store_check_uses_file_signature(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    first = store.load()
    assert store.check() is None and store.check() is None
    assert (store.hits, store.misses) == (2, 0)

    os.utime(cfg, ns=(1_800_000_000_000_000_000,) * 2)  # touched: same content, new mtime
    again = store.check()
    assert again == first and (store.hits, store.misses) == (2, 1)
    assert store.check() is None and store.hits == 3

    write(cfg, BASE.replace("port: 1883", "port: 1884"))
    changed = store.check()
    assert changed is not None and changed.mqtt.port == 1884
    assert store.settings is changed and store.misses == 2
    assert changed_sections(first, changed) == ["mqtt"]


def test_store_notices_replaced_file_with_same_mtime_and_size(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    store.load()
    before = os.stat(cfg)
    replacement = cfg.with_name("new.yaml")
    write(replacement, BASE.replace("port: 1883", "port: 1885"), mtime_ns=before.st_mtime_ns)
    os.replace(replacement, cfg)  # an editor's atomic save: only the inode differs
    assert store.check().mqtt.port == 1885


def test_store_invalid_edit_raises_once_and_keeps_old_settings(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    good = store.load()
    write(cfg, BASE.replace("port: 1883", "port: 99999\n  prot: 1"))
    with pytest.raises(ConfigError) as info:
        store.check()
    assert {p.path for p in info.value.problems} == {"mqtt.port", "mqtt.prot"}
    assert info.value.problems[0].line == 5
    assert store.check() is None and store.check() is None  # reported once
    assert store.settings is good and store.hits == 2

    write(cfg, "mqtt: [broken\n")  # a different bad file is reported again
    with pytest.raises(ConfigError, match="invalid YAML"):
        store.check()
    write(cfg, BASE.replace("port: 1883", "port: 1886"))
    assert store.check().mqtt.port == 1886


def test_store_missing_base_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ConfigStore(tmp_path / "nope.yaml", environ={}).load()


def test_store_without_file_uses_defaults_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = ConfigStore(None, environ={}, overrides={"device_id": "demo"})
    settings = store.load()
    assert settings.device_id == "demo" and settings.mqtt.host is None
    assert settings.state_dir == str(tmp_path / "state")
    assert store.check() is None
    assert store.set_overlay({"jobs": {"cache_size": 5}}).jobs.cache_size == 5


def test_store_overrides_sit_between_base_and_overlay(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={}, overrides={"mqtt": {"keepalive_s": 20}, "log_level": "DEBUG"})
    settings = store.load()
    assert (settings.mqtt.keepalive_s, settings.mqtt.host, settings.log_level) == (20, "broker.lan", "DEBUG")
    assert store.set_overlay({"mqtt": {"keepalive_s": 30}}).mqtt.keepalive_s == 30


def test_set_overlay_persists_atomically(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    store.load()
    settings = store.set_overlay({"mqtt": {"keepalive_s": 99}})
    settings = store.set_overlay({"jobs": {"cache_size": 7}})  # merged with the earlier change
    assert (settings.mqtt.keepalive_s, settings.jobs.cache_size) == (99, 7)
    assert store.overlay == {"mqtt": {"keepalive_s": 99}, "jobs": {"cache_size": 7}}
    store.overlay["mqtt"]["keepalive_s"] = 1  # a copy
    assert store.overlay["mqtt"]["keepalive_s"] == 99

    path = store.overlay_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {"mqtt": {"keepalive_s": 99}, "jobs": {"cache_size": 7}}
    assert [p.name for p in path.parent.iterdir()] == ["config-overlay.yaml"]  # no temp files left

    hits = store.hits
    assert store.check() is None and store.hits == hits + 1 and store.misses == 0  # own write is no change

    fresh = ConfigStore(cfg, environ={})
    assert fresh.load() == settings


def test_set_overlay_invalid_writes_nothing(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    good = store.load()
    with pytest.raises(ConfigError) as info:
        store.set_overlay({"mqtt": {"keepalive_s": 0, "prot": 1}, "memory": {"critical_percent": 10}})
    assert {p.path for p in info.value.problems} == {"mqtt.keepalive_s", "mqtt.prot", "memory.critical_percent"}
    assert not store.overlay_path.exists()
    assert store.settings is good and store.overlay == {}

    store.set_overlay({"jobs": {"cache_size": 9}})
    before = store.overlay_path.read_bytes()
    with pytest.raises(ConfigError):
        store.set_overlay({"jobs": {"cache_size": -1}})
    assert store.overlay_path.read_bytes() == before
    assert store.overlay == {"jobs": {"cache_size": 9}}
    with pytest.raises(ConfigError):
        store.set_overlay(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_set_overlay_refuses_local_keys_before_validating(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    good = store.load()
    with pytest.raises(RemoteForbidden) as info:
        store.set_overlay({"state_dir": "/tmp/elsewhere", "jobs": {"cache_size": -1},
                           "mqtt": {"host": "evil.example", "keepalive_s": 30}})
    assert info.value.paths == ["state_dir", "mqtt.host"]
    assert not store.overlay_path.exists() and store.settings is good
    with pytest.raises(RemoteForbidden):   # the fleet-wide scope is narrower
        store.set_overlay({"jobs": {"max_concurrent": 2}}, FLEET)
    assert store.set_overlay({"jobs": {"max_concurrent": 2}}, DEVICE).jobs.max_concurrent == 2


def test_overlay_problem_does_not_point_at_base_line(cfg: Path) -> None:
    write(cfg, BASE + "  critical_percent: 90\n")
    store = ConfigStore(cfg, environ={})
    store.load()
    with pytest.raises(ConfigError) as info:
        store.set_overlay({"memory": {"critical_percent": 50}})
    (problem,) = info.value.problems
    assert problem.path == "memory.critical_percent" and problem.line != 8  # line 8 holds the base's 90


def test_overlay_survives_base_rewrite_and_reset(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    store.load()
    store.set_overlay({"mqtt": {"keepalive_s": 99}})
    write(cfg, BASE.replace("host: broker.lan", "host: other.lan").replace("port: 1883", "port: 1000"))
    settings = store.check()
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.keepalive_s) == ("other.lan", 1000, 99)

    settings = store.reset_overlay()
    assert (settings.mqtt.host, settings.mqtt.keepalive_s) == ("other.lan", 60)
    assert not store.overlay_path.exists() and store.overlay == {}
    assert store.check() is None
    assert store.reset_overlay() == settings  # nothing to remove is fine


def test_hand_edited_overlay_is_validated(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={})
    store.load()
    store.set_overlay({"jobs": {"cache_size": 9}})
    write(store.overlay_path, "jobs:\n  cache_size: -5\n")
    with pytest.raises(ConfigError, match="jobs.cache_size"):
        store.check()
    assert store.check() is None and store.settings.jobs.cache_size == 9
    write(store.overlay_path, "state_dir: /elsewhere\njobs:\n  cache_size: 10\n")
    settings = store.check()   # a local key in the overlay is ignored, not trusted
    assert settings.state_dir == str(cfg.parent / "state") and settings.jobs.cache_size == 10
    write(store.overlay_path, "jobs:\n  cache_size: 11\n")
    assert store.check().jobs.cache_size == 11


def test_store_secrets_from_environment_and_redacted_view(cfg: Path) -> None:
    store = ConfigStore(cfg, environ={"VOICE_AGENT_MQTT_PASSWORD": SECRET})
    assert store.load().mqtt.password == SECRET
    assert SECRET not in json.dumps(store.effective())
    assert store.effective(redact=False)["mqtt"]["password"] == SECRET


# --- config.example.yaml ----------------------------------------------------------------------


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
