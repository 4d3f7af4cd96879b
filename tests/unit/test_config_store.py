"""agent.config.store: the live store, its file signature, overrides and the remote overlay."""

from __future__ import annotations

import json
import os
import stat
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent.config import store as config_store
from agent.config.store import ConfigStore, RemoteForbidden
from agent.settings import DEVICE, FLEET
from agent.config import ConfigError, changed_sections, revision, settings_to_dict


def write(path: Path, text: str, *, mtime_ns: int | None = None) -> None:
    """Write and force a distinct mtime: coarse filesystem timestamps must not hide an edit."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    if mtime_ns is None:
        mtime_ns = max(previous + 1_000_000_000, time.time_ns())
    os.utime(path, ns=(mtime_ns, mtime_ns))


SECRET = "hunter2-very-secret"


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
