"""Every remote-tunable value is bounded to what keeps the device working, tried from the schema.

The keys come from the schema (`agent.config.remote.tunable`, i.e. `remote=` in agent/settings.py),
not from a hand-written list, and so do their extremes: `min` / `max` narrowed by `remote_min` /
`remote_max`, the choices, `max_len`, plus the documented machine rules (job slots and engine
threads within the CPU cores, `memory.min_available_mb` within a quarter of the memory). One agent
takes every key at each accepted extreme over `config/set` and keeps answering; each value just
out of range is refused with a coded answer (`invalid_config`, `unsafe_value`,
`off_device_forbidden`) and changes nothing; after each section an inbox file is still processed,
and at the end every file has its transcript and the outbox dropped nothing.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import psutil
import yaml

from agent.config.remote import LOCAL_ONLY_VALUES, tunable
from agent.settings import DEVICE
from tests.support.inbox import drop
from tests.support.settings_schema import settings_field
from tests.support.wavs import tone_wav

MB = 1024 * 1024
CORES = len(os.sched_getaffinity(0))
QUARTER_OF_MEMORY_MB = int(psutil.virtual_memory().total / MB / 4)
OFF_DEVICE = {"transcriber.engine": {"openai"}, "summarizer.engine": {"openai", "anthropic"}}
REFUSED_CODES = {"invalid_config", "unsafe_value", "off_device_forbidden", "forbidden"}
# Keys ordered against another (agent/config/checks.py): each is tried with its partner at the far end.
PARTNERS = {"memory.warn_percent": ("memory.critical_percent", 99),
            "memory.critical_percent": ("memory.warn_percent", 1),
            "mqtt.reconnect_min_s": ("mqtt.reconnect_max_s", 600),
            "mqtt.reconnect_max_s": ("mqtt.reconnect_min_s", 0.5)}


def nested(path: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def cases(path: str) -> tuple[list[Any], list[Any]]:
    """(accepted extremes, values just out of range) for one key, from its schema metadata."""
    f, annotation = settings_field(path)
    meta = f.metadata
    members = typing.get_args(annotation) or (annotation,)
    optional = type(None) in members
    accepted: list[Any] = [None] if optional else []
    refused: list[Any] = []
    if meta.get("choices"):
        choices = list(meta["choices"]) + list(meta.get("test_choices", ()))
        if len(choices) > 12:            # the language list: both ends, the default and auto
            choices = [choices[0], choices[1], choices[-1], "auto"]
        off = OFF_DEVICE.get(path, set()) | set(LOCAL_ONLY_VALUES.get(path, ()))   # refused over MQTT
        return accepted + [c for c in choices if c not in off], [c for c in choices if c in off] + ["zz --model /x"]
    if bool in members:
        return [True, False], ["yes"]
    if str in members:                  # free text: bounded by max_len (and the prompt's one {text})
        limit = meta.get("max_len")
        assert limit is not None, f"{path}: a remote-tunable string without max_len"
        return ["{text}", "x" * (limit - 6) + "{text}"], ["x" * (limit - 5) + "{text}", "{text} {text}", "no text"]
    if list in [typing.get_origin(m) for m in members]:
        items, length = meta.get("max_len"), meta.get("item_max_len")
        assert items is not None and length is not None, f"{path}: a remote-tunable list without bounds"
        return accepted + [["w" * length] * items], [["w"] * (items + 1), ["w" * (length + 1)]]
    integer = int in members
    low = max(v for v in (meta["min"], meta.get("remote_min")) if v is not None)
    highs = [v for v in (meta["max"], meta.get("remote_max")) if v is not None]
    assert meta["min"] is not None and highs, f"{path}: a remote-tunable number needs a min and a max"
    high = min(highs)
    if path in ("jobs.max_concurrent", "transcriber.whisper_cpp.threads", "transcriber.faster_whisper.threads"):
        high = min(high, CORES)
    if path == "memory.min_available_mb":
        high = min(high, QUARTER_OF_MEMORY_MB)
    step = 1 if integer else 0.01
    cast = int if integer else float
    accepted += [cast(low), cast(high)]
    if meta.get("off") is not None:
        accepted.append(cast(meta["off"]))
    refused.append(cast(high + step))
    below = low - step
    if meta.get("off") is None or below > meta["off"]:
        refused.append(cast(below))
    return accepted, refused


class Device:
    def __init__(self, agent, probe) -> None:
        self.agent, self.probe, self.root = agent, probe, agent.root
        self.files = 0

    def ask(self, command: str, body: dict | None = None) -> dict:
        return self.probe.request(self.root, command, body or {}, timeout=30)

    def set(self, path: str, value: Any) -> dict:
        online = self.onlines()
        change = nested(path, value)
        if path in PARTNERS:
            other, far = PARTNERS[path]
            change = {section: {**keys, **nested(other, far)[section]} for section, keys in change.items()}
        answer = self.ask("config/set", {"config": change})
        if answer["status"] == "ok" and "mqtt" in answer["data"]["restarted"]:
            self.probe.wait_for(f"{self.root}/availability", lambda m: m.payload == b"online", count=online + 1,
                                timeout=20, what=f"online again after {path}")
        return answer

    def onlines(self) -> int:
        return len([m for m in self.probe.on(f"{self.root}/availability") if m.payload == b"online"])

    def answers(self, what: str) -> None:
        assert self.ask("ping")["data"] == {"pong": True}, what
        assert self.ask("state")["status"] == "ok", what

    def processes_a_file(self) -> None:
        self.files += 1
        name = f"bounds-{self.files}.wav"
        drop(self.agent.inbox, name, tone_wav(0.4))
        self.probe.wait_for(f"{self.root}/event/transcript", lambda m: m.json["source"]["name"] == name,
                            timeout=30, what=f"the transcript of {name}")


def test_every_remote_tunable_key_at_its_extremes_keeps_the_device_working(make_agent, probe):
    agent = make_agent({"inbox": {"settle_ms": 200},
                        # a wake model named locally, so `listen.mode: wake` is an accepted extreme
                        "listen": {"wake_word": {"models": ["okay_nabu"]}}}).start(probe)
    device = Device(agent, probe)
    keys = tunable(DEVICE)
    assert len(keys) > 60 and "memory.repeat_s" in keys   # the schema, not a hand-made list
    device.processes_a_file()
    section = keys[0].split(".")[0]
    tried = 0
    for path in keys:
        accepted, refused = cases(path)
        revision = device.ask("config/get")["data"]["revision"]
        for value in refused:
            answer = device.set(path, value)
            assert answer["status"] == "error" and answer["error"]["code"] in REFUSED_CODES, (path, value, answer)
            assert path.split(".")[0] in answer["error"]["message"], (path, answer["error"]["message"])
            assert "Traceback" not in answer["error"]["message"]
        assert device.ask("config/get")["data"]["revision"] == revision, f"a refused {path} changed the config"
        for value in accepted:
            answer = device.set(path, value)
            assert answer["status"] == "ok", (path, value if not isinstance(value, (str, list)) or len(str(value)) < 80
                                              else f"{str(value)[:60]}...", answer)
            device.answers(f"{path} = {str(value)[:40]}")
            tried += 1
        assert device.ask("config/reset")["status"] == "ok"
        if path.split(".")[0] != section or path == keys[-1]:
            section = path.split(".")[0]
            device.processes_a_file()
    stats = device.ask("stats")["data"]
    print(f"\n{len(keys)} remote-tunable keys, {tried} accepted extremes, {device.files} inbox files, "
          f"outbox dropped {stats['outbox'].get('dropped')}")
    transcripts = probe.on(f"{agent.root}/event/transcript")
    assert len(transcripts) == device.files, "a file lost its transcript"
    assert stats["outbox"].get("dropped", 0) == 0
    assert agent.alive()


def test_summarizer_prompt_is_bounded_with_exactly_one_text(make_agent, probe, broker):
    """A 6 MB prompt (or one with many {text}) once built 100 MB per summary and rode in every
    retained config; now it is refused and the retained config stays small."""
    agent = make_agent().start(probe)
    for prompt, word in (("Summarize: {text} " + "x" * 6_000_000, "4096"), ("{text}" * 50, "exactly once"),
                         ("Summarize this.", "exactly once")):
        answer = probe.request(agent.root, "config/set", {"config": {"summarizer": {"prompt": prompt}}})
        assert answer["status"] == "error" and answer["error"]["code"] == "invalid_config", answer["error"]
        assert word in answer["error"]["message"] and "summarizer.prompt" in answer["error"]["message"]
    assert probe.request(agent.root, "config/set",
                         {"config": {"summarizer": {"prompt": "Short: {text}"}}})["status"] == "ok"
    config = probe.request(agent.root, "config/get")
    assert config["data"]["config"]["summarizer"]["prompt"] == "Short: {text}"
    assert len([m for m in probe.on(f"{agent.root}/config") if len(m.payload) > 100_000]) == 0
    assert probe.request(agent.root, "summarize", {"text": "One two three four five six seven. Eight nine ten "
                                                           "eleven twelve thirteen fourteen."})["status"] == "ok"


def test_an_overlay_beyond_the_remote_bounds_is_not_trusted_at_start(make_agent, probe):
    """An overlay written before the bounds existed (an attacker's 1 s alert repeat, 1e15 MB
    minimum, 32 jobs) loses those keys at load, with a warning; the rest still applies."""
    agent = make_agent()
    state = Path(agent.config["state_dir"])
    state.mkdir(parents=True)
    (state / "config-overlay.yaml").write_text(yaml.safe_dump({
        "memory": {"repeat_s": 1, "min_available_mb": QUARTER_OF_MEMORY_MB * 2},
        "jobs": {"max_concurrent": CORES + 1, "cache_size": 7}}))
    agent.start(probe)
    config = probe.request(agent.root, "config/get")["data"]["config"]
    assert config["jobs"]["cache_size"] == 7
    assert (config["memory"]["repeat_s"], config["memory"]["min_available_mb"], config["jobs"]["max_concurrent"]) \
        == (60.0, None, 1)
    assert "beyond what a remote change may set" in agent.log()
