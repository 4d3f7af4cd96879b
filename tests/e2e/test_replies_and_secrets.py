"""Replies, secrets and keys, tried as a requester who may publish (docs/security.md).

- A request's MQTT 5 Response Topic and a fleet job's `reply_to` are honoured only inside the
  reply namespace (`<prefix>/results/...` or the device's own `<root>/response/...`): aimed at a
  device's event, state, config or last topic, the request is not run and the refusal goes to
  the default response topic; a fleet job is refused on an allowed Response Topic, or dropped.
- The retained `config` (and `config/get`, `check-config`, the log) never shows a credential the
  operator wrote into a command line, `extra_args` or a URL's userinfo.
- Switching to an engine that sends audio or transcripts off the device needs the local opt-in
  `mqtt.remote_off_device_engines`; without it config/set answers `off_device_forbidden`.
- Running as root logs a warning at start, and `doctor` reports it.
"""

from __future__ import annotations

import base64
import json
import os
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.cli import cli
from tests.support.probe import retained
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav

SECRETS = {
    "openai": "sk-proj-Zq8vR2mXb7Kc1Lw9Tt4Yh6Pn3Ds5Fg0J",
    "hf": "hf_QwErTyUiOpAsDfGhJkLzXcVbNm123456",
    "url_password": "s3cr3t-Pa55word",
    "server_password": "hunter2-Server",
    "flag_value": "plain-looking-value-77",
}
SECRET_CONFIG = {
    "fleet": {"worker": True},
    "transcriber": {
        "whisper_cpp": {"extra_args": ["--hf-token", SECRETS["hf"]]},
        "openai": {"base_url": f"https://svc:{SECRETS['url_password']}@api.example.com/v1"},
        "whisper_server": {"url": f"http://admin:{SECRETS['server_password']}@10.1.2.3:8178",
                           "command": ["whisper-server", f"--api-key={SECRETS['openai']}"]},
    },
    "summarizer": {"llama_server": {"command": ["llama-server", "--port", "{port}", "--api-key",
                                                SECRETS["flag_value"], "-m", "{model}"]}},
}


def ask_with_reply(probe, root: str, command: str, body: dict, reply: str) -> str:
    """Publish a request naming `reply` as its Response Topic; returns the transaction."""
    transaction = uuid.uuid4().hex
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply
    props.CorrelationData = transaction.encode()
    probe.publish(f"{root}/request/{command}", {**body, "transaction": transaction}, properties=props)
    return transaction


def test_response_topics_and_reply_to_stay_in_the_reply_namespace(make_agent, probe):
    agent = make_agent({"fleet": {"worker": True}}).start(probe)
    root = agent.root
    wait_until(lambda: probe.request(root, "stats")["data"]["fleet"]["subscribed"], 20, "joined the fleet group")
    revision = probe.request(root, "config/get")["data"]["revision"]
    forbidden = [f"{root}/event/transcript", f"{root}/state", f"{root}/config", f"{root}/last/summary",
                 f"{root}/alert/memory", "voice/other-dev/event/transcript", "elsewhere/anything", f"{root}/response"]
    for reply in forbidden:
        transaction = ask_with_reply(probe, root, "config/set", {"config": {"jobs": {"cache_size": 3}}}, reply)
        [answer] = probe.wait_for(f"{root}/response/config/set", lambda m, t=transaction: m.json["transaction"] == t,
                                  what=f"refusal of Response Topic {reply}")
        assert answer.json["error"]["code"] == "reply_topic_forbidden", answer.json
        assert answer.properties.CorrelationData == transaction.encode()
    for reply in (f"voice/results/{uuid.uuid4().hex[:6]}", f"{root}/response/dashboard-7"):
        transaction = ask_with_reply(probe, root, "ping", {}, reply)
        [answer] = probe.wait_for(reply, lambda m, t=transaction: m.json["transaction"] == t, what=f"ping on {reply}")
        assert answer.json["data"] == {"pong": True}
    assert probe.request(root, "config/get")["data"]["revision"] == revision, "a refused request was run"

    # Fleet jobs: a reply_to outside the namespace is refused on the allowed Response Topic ...
    audio = base64.b64encode(tone_wav(0.3)).decode()
    results = f"voice/results/{uuid.uuid4().hex[:6]}"
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = results
    probe.publish("voice/jobs/transcribe", {"job_id": "hijack-1", "audio_b64": audio,
                                            "reply_to": f"{root}/event/transcript"}, properties=props)
    [refused] = probe.wait_for(results, lambda m: m.json["job_id"] is None or m.json["status"] == "error",
                               what="the refusal of a job aimed at an event topic")
    assert refused.json["error"]["code"] == "reply_topic_forbidden", refused.json
    # ... and without one it is dropped; a later good job is answered, so the bad one was handled first.
    probe.publish("voice/jobs/transcribe", {"job_id": "hijack-2", "audio_b64": audio,
                                            "reply_to": "voice/other-dev/state"})
    probe.publish("voice/jobs/transcribe", {"job_id": "good", "audio_b64": audio, "reply_to": results})
    probe.wait_for(results, lambda m: m.json["job_id"] == "good" and m.json["status"] == "ok", timeout=30,
                   what="the good job's result")
    published = {m.topic for m in probe.messages}
    assert "voice/other-dev/state" not in published
    assert not [m for m in probe.on(f"{root}/event/transcript") if b"hijack" in m.payload]
    assert not [m for m in probe.on(f"{root}/#") if m.topic in forbidden and b"pong" in m.payload]


def test_retained_config_redacts_credentials_in_commands_and_urls(make_agent, probe, broker, tmp_path):
    agent = make_agent(SECRET_CONFIG).start(probe)
    kept = retained(broker.host, broker.port, f"{agent.root}/config")
    assert kept is not None
    got = probe.request(agent.root, "config/get")
    check = cli("check-config", str(agent.config_path), env={**agent.env}, cwd=agent.workdir)
    for where, text in (("retained config", kept.payload.decode()), ("config/get", json.dumps(got)),
                        ("check-config", check.stdout + check.stderr), ("log", agent.log())):
        for name, secret in SECRETS.items():
            assert secret not in text, f"{name} shown in the {where}"
    config = kept.json["config"]
    assert config["transcriber"]["openai"]["base_url"] == "https://***@api.example.com/v1"
    assert config["transcriber"]["whisper_cpp"]["extra_args"] == ["--hf-token", "***"]
    assert config["summarizer"]["llama_server"]["command"][3:5] == ["--api-key", "***"]
    assert config["transcriber"]["whisper_server"]["command"] == ["whisper-server", "--api-key=***"]


def test_off_device_engines_need_the_local_opt_in(make_agent, probe):
    agent = make_agent(SECRET_CONFIG).start(probe)
    root = agent.root
    for change in ({"transcriber": {"engine": "openai"}}, {"transcriber": {"engine": "whisper_server"}},
                   {"summarizer": {"engine": "openai"}}, {"summarizer": {"engine": "anthropic"}}):
        answer = probe.request(root, "config/set", {"config": change})
        assert answer["status"] == "error" and answer["error"]["code"] == "off_device_forbidden", (change, answer)
        assert "remote_off_device_engines" in answer["error"]["message"]
    # An engine on the device itself stays switchable.
    assert probe.request(root, "config/set", {"config": {"summarizer": {"engine": "none"}}})["status"] == "ok"
    # The opt-in is local: config/set cannot set it ...
    answer = probe.request(root, "config/set", {"config": {"mqtt": {"remote_off_device_engines": True}}})
    assert answer["error"]["code"] == "forbidden", answer
    # ... the local file can, and then the switch is accepted.
    agent.write_config({**agent.config, "mqtt": {**agent.config["mqtt"], "remote_off_device_engines": True}})
    wait_until(lambda: probe.request(root, "config/get")["data"]["config"]["mqtt"]["remote_off_device_engines"],
               20, "the local opt-in applied")
    assert probe.request(root, "config/set", {"config": {"transcriber": {"engine": "openai"}}})["status"] == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to run as root to see the warning")
def test_running_as_root_is_warned_at_start_and_by_doctor(make_agent, probe, tmp_path):
    agent = make_agent().start(probe)
    wait_until(lambda: "running as root" in agent.log(), 10, "the root warning in the log")
    assert any("WARNING" in line and "running as root" in line for line in agent.log().splitlines())
    out = cli("doctor", "--config", str(agent.config_path), env=agent.env, cwd=agent.workdir)
    assert any(line.startswith("WARNING  user: running as root") for line in out.stdout.splitlines()), out.stdout
