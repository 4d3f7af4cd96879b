"""What `config/set` over MQTT may and may not change, tried as an attacker who may publish.

Every local-only key of the schema (derived from `agent.settings`, not a hand-picked list) is sent
to a running agent on its own request topic and on the fleet-wide one, with values that would be
valid in the local file and that point at a temporary folder holding canary files. Each must be
refused as a whole with `forbidden` and the key path, and leave the config, the overlay, the
agent's processes and the canary folder exactly as they were. Remote tuning of thresholds and
intervals keeps working.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from agent.config.remote import tunable
from agent.settings import FLEET
from tests.support.inbox import drop
from tests.support.probe import Probe
from tests.support.settings_schema import LOCAL, settings_field
from tests.support.wavs import tone_wav


def hostile_value(path: str, canary: Path) -> Any:
    """A value the local file would accept for `path`, aimed at the canary folder where it can be."""
    f, annotation = settings_field(path)
    meta = f.metadata
    text = str(annotation)
    default = f.default if f.default is not dataclasses.MISSING else None
    if meta.get("choices"):
        return next(c for c in meta["choices"] if c != default and not isinstance(c, bool))
    if "list" in text:
        return [sys.executable, "-c", f"open({str(canary / 'ran')!r}, 'w').write('pwned')"]
    if annotation is bool or text.startswith("bool"):
        return not default
    if "int" in text or "float" in text:
        low, high = meta.get("min"), meta.get("max")
        value = low if low is not None and low != default else (high if high is not None else 7)
        return int(value) if "int" in text else float(value)
    if meta.get("path") or path.endswith("_dir") or path == "inbox.path":
        return str(canary)
    if path == "device_id":
        return "attacker-dev"
    return "127.0.0.1" if "host" in path or "url" in path else str(canary / "evil")


def fleet_request(probe: Probe, agent_root: str, prefix: str, command: str, body: dict,
                  timeout: float = 20) -> dict:
    """Publish on <prefix>/all/request/<command>; each device answers on its own response topic."""
    transaction = uuid.uuid4().hex
    probe.publish(f"{prefix}/all/request/{command}", {**body, "transaction": transaction})
    return probe.wait_for(f"{agent_root}/response/{command}", lambda m: m.json.get("transaction") == transaction,
                          timeout=timeout, what=f"fleet-wide {command} answer")[0].json


def ask(probe: Probe, agent, topic: str, command: str, body: dict) -> dict:
    if topic == "fleet":
        return fleet_request(probe, agent.root, "voice", command, body)
    return probe.request(agent.root, command, body)


def canary_folder(tmp_path: Path) -> Path:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "passwd").write_text("root:x:0:0:canary\n")
    (canary / "speech.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    return canary


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def nested(path: str, value: Any) -> dict:
    out: Any = value
    for key in reversed(path.split(".")):
        out = {key: out}
    return out


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def guarded(make_agent, probe, tmp_path):
    """An agent that accepts fleet-wide config (so the key check itself is what refuses), a canary folder."""
    canary = canary_folder(tmp_path)
    agent = make_agent({"fleet": {"remote_config": True}}).start(probe)
    before = probe.request(agent.root, "config/get")["data"]
    return agent, canary, before


def inbox_still_here(probe: Probe, agent) -> None:
    """A positive marker instead of "sleep longer than the settle time": a file dropped in the real
    inbox now is settled, taken and transcribed, so the inbox watched its own folder through a
    whole settle period after the refused requests. An inbox moved to the canary folder would
    not take it (and the wait fails)."""
    name = f"marker-{uuid.uuid4().hex[:8]}.wav"
    drop(agent.inbox, name, tone_wav(0.2))
    probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["name"] == name, timeout=20,
                   what="the marker file transcribed from the real inbox")


def assert_untouched(probe: Probe, agent, canary: Path, canary_before: dict, config_before: dict) -> None:
    after = probe.request(agent.root, "config/get")["data"]
    assert after["revision"] == config_before["revision"], "the config changed"
    assert after["config"] == config_before["config"]
    assert not (Path(agent.config["state_dir"]) / "config-overlay.yaml").exists(), "an overlay was written"
    assert snapshot(canary) == canary_before, "the canary folder was touched"
    assert agent.alive()
    assert psutil.Process(agent.proc.pid).children(recursive=True) == [], "the agent started a process"


def test_every_local_key_is_refused_on_both_topics_and_nothing_happens(guarded, probe) -> None:
    agent, canary, before = guarded
    canary_before = snapshot(canary)
    for topic in ("device", "fleet"):
        for path in LOCAL:
            answer = ask(probe, agent, topic, "config/set", {"config": nested(path, hostile_value(path, canary))})
            assert answer["status"] == "error", (topic, path, answer)
            assert answer["error"]["code"] == "forbidden", (topic, path, answer)
            assert answer["error"]["keys"] == [path], (topic, path, answer)
            assert path in answer["error"]["message"]
    inbox_still_here(probe, agent)
    assert_untouched(probe, agent, canary, canary_before, before)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_mix_with_a_local_key_is_refused_whole(guarded, probe, data) -> None:
    agent, canary, before = guarded
    canary_before = snapshot(canary)
    topic = data.draw(st.sampled_from(["device", "fleet"]))
    bad = data.draw(st.lists(st.sampled_from(LOCAL), min_size=1, max_size=4, unique=True))
    good = data.draw(st.lists(st.sampled_from(tunable(FLEET)), max_size=3, unique=True))
    body = merged(*[nested(p, hostile_value(p, canary)) for p in bad + good])
    answer = ask(probe, agent, topic, "config/set", {"config": body})
    assert answer["status"] == "error" and answer["error"]["code"] == "forbidden", answer
    assert sorted(answer["error"]["keys"]) == sorted(bad)
    assert_untouched(probe, agent, canary, canary_before, before)


def test_inbox_path_aimed_at_a_canary_folder_leaves_it_untouched(guarded, probe) -> None:
    agent, canary, before = guarded
    canary_before = snapshot(canary)
    for topic in ("device", "fleet"):
        answer = ask(probe, agent, topic, "config/set",
                     {"config": {"inbox": {"path": str(canary), "processed_dir": str(canary / "p")}}})
        assert answer["error"]["code"] == "forbidden"
        assert sorted(answer["error"]["keys"]) == ["inbox.path", "inbox.processed_dir"]
    inbox_still_here(probe, agent)
    assert snapshot(canary) == canary_before
    assert not (canary / "failed").exists() and not (canary / "processed").exists()
    assert_untouched(probe, agent, canary, canary_before, before)


def test_device_only_keys_are_refused_fleet_wide_but_tunable_on_the_device(guarded, probe) -> None:
    agent, canary, before = guarded
    answer = fleet_request(probe, agent.root, "voice", "config/set", {"config": {"jobs": {"max_concurrent": 2}}})
    assert answer["error"]["code"] == "forbidden" and answer["error"]["keys"] == ["jobs.max_concurrent"]
    ok = probe.request(agent.root, "config/set", {"config": {"jobs": {"max_concurrent": 2}}})
    assert ok["status"] == "ok", ok
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 2


def test_remote_tuning_of_a_threshold_and_an_interval_works(make_agent, probe) -> None:
    agent = make_agent().start(probe)
    got = probe.request(agent.root, "config/get")["data"]
    assert "memory.warn_percent" in got["remote_tunable"] and "telemetry.interval_s" in got["fleet_tunable"]
    assert "inbox.path" not in got["remote_tunable"]
    retained = probe.wait_for(f"{agent.root}/config", what="retained config")[-1].json
    assert retained["remote_tunable"] == got["remote_tunable"]

    answer = probe.request(agent.root, "config/set",
                           {"config": {"memory": {"warn_percent": 70.5}, "telemetry": {"interval_s": 1}}})
    assert answer["status"] == "ok", answer
    config = probe.request(agent.root, "config/get")["data"]["config"]
    assert config["memory"]["warn_percent"] == 70.5 and config["telemetry"]["interval_s"] == 1
    seen = len(probe.on(f"{agent.root}/telemetry"))
    probe.wait_for(f"{agent.root}/telemetry", count=seen + 2, timeout=10, what="telemetry every second")
    overlay = yaml.safe_load((Path(agent.config["state_dir"]) / "config-overlay.yaml").read_text())
    assert overlay == {"memory": {"warn_percent": 70.5}, "telemetry": {"interval_s": 1}}


def test_fleet_wide_config_is_off_by_default_and_narrow_when_on(make_agent, probe) -> None:
    agent = make_agent().start(probe)   # fleet.remote_config defaults to false
    refused = fleet_request(probe, agent.root, "voice", "config/set", {"config": {"log_level": "WARNING"}})
    assert refused["error"]["code"] == "forbidden" and "fleet.remote_config" in refused["error"]["message"]
    assert fleet_request(probe, agent.root, "voice", "config/reset", {})["error"]["code"] == "forbidden"
    assert probe.request(agent.root, "config/get")["data"]["config"]["log_level"] == "DEBUG"

    agent.stop()
    agent.write_config({**agent.config, "fleet": {"remote_config": True}})
    agent.start(probe)
    ok = fleet_request(probe, agent.root, "voice", "config/set", {"config": {"log_level": "WARNING",
                                                                            "vad": {"silence_ms": 700}}})
    assert ok["status"] == "ok", ok
    config = probe.request(agent.root, "config/get")["data"]["config"]
    assert config["log_level"] == "WARNING" and config["vad"]["silence_ms"] == 700


def test_an_old_overlay_naming_local_keys_is_not_trusted(make_agent, probe, tmp_path) -> None:
    """An overlay written before this check existed may hold an attacker's command or folder."""
    canary = canary_folder(tmp_path)
    canary_before = snapshot(canary)
    agent = make_agent()
    state = Path(agent.config["state_dir"])
    state.mkdir(parents=True)
    (state / "config-overlay.yaml").write_text(yaml.safe_dump({
        "inbox": {"path": str(canary)}, "jobs": {"cache_size": 7},
        "summarizer": {"llama_server": {"oneshot_command": [sys.executable, "-c", "print(1)"]}},
    }))
    agent.start(probe)
    config = probe.request(agent.root, "config/get")["data"]["config"]
    assert config["jobs"]["cache_size"] == 7                      # the tunable part still applies
    assert config["inbox"]["path"] == str(agent.inbox)
    assert config["summarizer"]["llama_server"]["oneshot_command"] is None
    inbox_still_here(probe, agent)
    assert snapshot(canary) == canary_before
    assert "only the local config file may set" in agent.log()
    # The next remote change rewrites the overlay without them.
    assert probe.request(agent.root, "config/set", {"config": {"jobs": {"cache_size": 8}}})["status"] == "ok"
    assert yaml.safe_load((state / "config-overlay.yaml").read_text()) == {"jobs": {"cache_size": 8}}


def test_remote_config_false_refuses_even_tunable_keys(make_agent, probe) -> None:
    agent = make_agent({"mqtt": {"remote_config": False}}).start(probe)
    answer = probe.request(agent.root, "config/set", {"config": {"vad": {"silence_ms": 700}}})
    assert answer["error"]["code"] == "forbidden"
    assert json.dumps(answer).count("mqtt.remote_config") == 1
