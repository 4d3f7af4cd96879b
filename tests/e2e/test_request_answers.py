"""Foundation: the agent process, its config and its MQTT API, observed only from outside."""

from __future__ import annotations

import json

import os
import time

import pytest
import yaml

from tests.support.broker import Broker
from tests.support.probe import Probe, retained

SECRET = "s3cret-Pa55word"


def test_availability_online_then_offline_by_last_will(make_agent, broker, probe):
    agent = make_agent().start(probe)
    late = Probe(broker.host, broker.port, subscribe=(f"{agent.root}/availability",))
    try:
        late.wait_for(f"{agent.root}/availability", lambda m: m.retain and m.text == "online", what="retained online")
    finally:
        late.close()
    agent.kill9()
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", what="Last Will offline")


def test_clean_shutdown_publishes_offline_and_exits_zero(agent, probe):
    assert agent.terminate() == 0
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", what="offline on SIGTERM")


def test_retained_state_and_config_hide_secrets(make_agent, broker, probe):
    agent = make_agent({"mqtt": {"username": "dev"}}, env={"VOICE_AGENT_MQTT_PASSWORD": SECRET}).start(probe)
    probe.wait_for(f"{agent.root}/config", what="config")
    probe.wait_for(f"{agent.root}/state", what="state")
    state = retained(broker.host, broker.port, f"{agent.root}/state").json   # what newcomers get
    config = retained(broker.host, broker.port, f"{agent.root}/config").json
    for key in ("device_id", "version", "started_at", "uptime_s", "paused", "jobs", "engines", "config_revision",
                "ts"):
        assert key in state, key
    assert state["jobs"] == {"running": 0, "limit": 1}
    assert set(state["engines"]) == {"transcriber", "summarizer"}
    assert config["config"]["mqtt"]["password"] == "***"
    assert config["config"]["mqtt"]["username"] == "dev"
    for m in probe.messages:
        assert SECRET.encode() not in m.payload, m.topic
    assert SECRET not in agent.log()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_command_answers(agent, broker, protocol):
    client = Probe(broker.host, broker.port, protocol=protocol)
    try:
        rt = f"reply/{protocol}/x" if protocol == "5" else None
        for command in ("ping", "state", "stats", "config/get", "pause", "resume"):
            answer = client.request(agent.root, command, {}, response_topic=rt)
            assert answer["status"] == "ok", (command, answer)
            assert answer["device_id"] == agent.device_id and "ts" in answer
        assert client.request(agent.root, "ping", response_topic=rt)["data"] == {"pong": True}
        if protocol == "5":
            m = client.on(rt)[-1]
            assert m.properties.CorrelationData   # echoed for the requester to match
        stats = client.request(agent.root, "stats")["data"]
        for key in ("jobs", "requests", "outbox", "caches", "inbox", "agent_rss_mb"):
            assert key in stats, key
    finally:
        client.close()


def test_correlation_data_is_echoed(agent, probe):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "my/inbox"
    props.CorrelationData = b"corr-42"
    probe.publish(f"{agent.root}/request/ping", {}, properties=props)
    m = probe.wait_for("my/inbox", what="answer on the Response Topic")[0]
    assert m.properties.CorrelationData == b"corr-42"
    assert m.json["status"] == "ok"


@pytest.mark.parametrize("payload, code", [
    (b"{not json", "bad_request"),
    (b"\xff\xfe\x00garbage", "bad_request"),
    (b"[1, 2, 3]", "bad_request"),
    (b'{"transaction": 5}', "bad_request"),
    (b"[" * 100000 + b"]" * 100000, "bad_request"),
])
def test_bad_requests_get_errors_and_agent_keeps_serving(agent, probe, payload, code):
    probe.publish(f"{agent.root}/request/ping", payload)
    answer = probe.wait_for(f"{agent.root}/response/ping", lambda m: m.json["status"] == "error",
                            what="error answer")[0].json
    assert answer["error"]["code"] == code
    assert "Traceback" not in answer["error"]["message"]
    assert probe.request(agent.root, "ping")["status"] == "ok"


def test_wrong_type_names_the_field(agent, probe):
    answer = probe.request(agent.root, "config/set", {"config": "nope"})
    assert answer["error"]["code"] == "bad_request"
    assert "config" in answer["error"]["message"]
    assert probe.request(agent.root, "ping", {"extra": 1})["error"]["code"] == "bad_request"


def test_unknown_command(agent, probe):
    answer = probe.request(agent.root, "make/coffee")
    assert answer["status"] == "error" and answer["error"]["code"] == "unknown_command"


def test_oversized_payload(make_agent, probe):
    agent = make_agent({"mqtt": {"max_payload_bytes": 2048}}).start(probe)
    probe.publish(f"{agent.root}/request/ping", {"pad": "x" * 5000, "transaction": "big"})
    answer = probe.wait_for(f"{agent.root}/response/ping", what="an error answer")[0].json
    assert answer["error"]["code"] == "payload_too_large"
    assert answer["transaction"] is None   # an oversized payload is not parsed
    assert probe.request(agent.root, "ping")["status"] == "ok"


def test_allowed_commands_and_remote_config_off(make_agent, probe):
    agent = make_agent({"mqtt": {"allowed_commands": ["ping", "config/set"], "remote_config": False}}).start(probe)
    assert probe.request(agent.root, "ping")["status"] == "ok"
    assert probe.request(agent.root, "state")["error"]["code"] == "forbidden"
    answer = probe.request(agent.root, "config/set", {"config": {"jobs": {"max_concurrent": 2}}})
    assert answer["error"]["code"] == "forbidden"


def test_config_set_valid_invalid_persisted_and_reset(make_agent, probe):
    agent = make_agent().start(probe)
    rev0 = probe.request(agent.root, "config/get")["data"]["revision"]

    bad = probe.request(agent.root, "config/set", {"config": {"jobs": {"max_concurrent": 0, "bogus": 1},
                                                              "mqtt": {"prot": "5"}}})
    assert bad["error"]["code"] == "invalid_config"
    paths = {e["path"] for e in bad["error"]["errors"]}
    assert paths == {"jobs.max_concurrent", "jobs.bogus", "mqtt.prot"}
    assert probe.request(agent.root, "config/get")["data"]["revision"] == rev0   # nothing changed

    secret = probe.request(agent.root, "config/set", {"config": {"mqtt": {"password": SECRET}}})
    assert secret["error"]["code"] == "forbidden" and secret["error"]["keys"] == ["mqtt.password"]
    assert SECRET not in json.dumps(secret)   # credentials are local only, and never echoed

    ok = probe.request(agent.root, "config/set", {"config": {"jobs": {"max_concurrent": 2},
                                                             "mqtt": {"keepalive_s": 30}}})
    assert ok["status"] == "ok", ok
    assert ok["data"]["revision"] != rev0 and ok["data"]["restarted"] == ["mqtt"]
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["jobs"]["limit"] == 2, what="state with limit 2")
    config = probe.wait_for(f"{agent.root}/config", lambda m: m.json["revision"] == ok["data"]["revision"])[0].json
    assert config["config"]["mqtt"]["keepalive_s"] == 30
    assert config["config"]["jobs"]["max_concurrent"] == 2

    agent.terminate()
    agent.start(probe)   # persisted across a restart
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 2
    reset = probe.request(agent.root, "config/reset")
    assert reset["status"] == "ok" and reset["data"]["revision"] == rev0
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 1
    for m in probe.messages:
        if "/request/" not in m.topic:   # only our own request carries it
            assert SECRET.encode() not in m.payload, m.topic
    assert SECRET not in agent.log()


def test_config_file_edit_applied_live_and_invalid_edit_refused(make_agent, broker, probe):
    agent = make_agent().start(probe)
    agent.config["jobs"] = {"max_concurrent": 3}
    agent.write_config(agent.config)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["jobs"]["limit"] == 3, what="limit 3 applied live")

    agent.config_path.write_text("jobs:\n  max_concurrent: 3\n  surprise: [unclosed\n")
    alert = probe.wait_for(f"{agent.root}/event/alert", lambda m: m.json["kind"] == "config",
                           what="config alert")[0].json
    assert alert["level"] == "error" and alert["errors"]
    kept = retained(broker.host, broker.port, f"{agent.root}/alert/config")
    assert kept is not None and kept.json["level"] == "error"
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 3   # old config keeps running
    agent.write_config({**agent.config, "jobs": {"max_concurrent": 1}})
    probe.wait_for(f"{agent.root}/alert/config", lambda m: m.payload == b"", what="alert cleared")
    assert retained(broker.host, broker.port, f"{agent.root}/alert/config", timeout=1) is None
    stats = probe.request(agent.root, "stats")["data"]
    assert stats["caches"]["config"]["misses"] >= 3 and stats["caches"]["config"]["hits"] >= 1


def test_sighup_reloads(make_agent, probe):
    agent = make_agent().start(probe)
    agent.config["jobs"] = {"max_concurrent": 4}
    agent.write_config(agent.config)
    agent.proc.send_signal(1)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["jobs"]["limit"] == 4, what="limit 4 after SIGHUP")


def test_fleet_wide_request_answered_by_every_device(make_agent, probe):
    a = make_agent(name="a", device_id="dev-a").start(probe)
    b = make_agent(name="b", device_id="dev-b").start(probe)
    probe.publish("voice/all/request/ping", {"transaction": "fleet-1"})
    for agent in (a, b):
        m = probe.wait_for(f"{agent.root}/response/ping", what=f"{agent.device_id} answer")[0].json
        assert m["transaction"] == "fleet-1" and m["device_id"] == agent.device_id


def test_bad_config_at_start_exits_78_with_path_and_line(make_agent):
    agent = make_agent()
    agent.config_path.write_text("mqtt:\n  port: 70000\n  prot: 5\n")
    agent.start()
    assert agent.proc.wait(timeout=20) == 78
    log = agent.log()
    assert "line 2" in log and "mqtt.port" in log and "did you mean 'port'" in log
    assert "Traceback" not in log


def test_check_config_cli(tmp_path):
    import subprocess
    from tests.support.agent import voice_agent_cmd
    good = tmp_path / "good.yaml"
    good.write_text(f"mqtt:\n  host: broker.local\n  password: {SECRET}\n")
    out = subprocess.run([*voice_agent_cmd(), "check-config", str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    effective = yaml.safe_load(out.stdout)
    assert effective["mqtt"]["password"] == "***" and SECRET not in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  max_concurrent: many\ntelemetry:\n  interval_s: -1\n")
    out = subprocess.run([*voice_agent_cmd(), "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 78
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "line 2" in lines[0] and "jobs.max_concurrent" in lines[0]
    assert "telemetry.interval_s" in lines[1]
    version = subprocess.run([*voice_agent_cmd(), "version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip()


def test_events_during_broker_outage_arrive_in_order_exactly_once(tmp_path):
    """A persistent-session subscriber and a broker that keeps sessions across its restart:
    every event produced while the broker was down arrives after it returns, in order, once each."""
    from tests.support.agent import AgentProcess
    broker = Broker(tmp_path / "pbroker", persistent=True).start()
    sub = Probe(broker.host, broker.port, protocol="3.1.1", client_id="persistent-sub", persistent=True,
                subscribe=("voice/+/event/#", "voice/+/availability"))
    agent = AgentProcess(tmp_path / "outage-agent", broker.port)
    try:
        agent.start(sub)
        broker.stop()
        names = [f"f{i:02d}.wav" for i in range(20)]
        _drop_wavs(agent.inbox, names)
        deadline = time.monotonic() + 60
        while len(list((agent.inbox / "processed").glob("*.wav.json"))) < len(names):
            assert time.monotonic() < deadline, "files not processed while the broker was down"
            time.sleep(0.2)
        broker.start()
        sub.wait_for(f"{agent.root}/event/transcript", count=len(names), timeout=60,
                     what="transcripts after the outage")
        time.sleep(2)   # anything duplicated would have arrived by now
        msgs = sub.on(f"{agent.root}/event/transcript")
        job_ids = [m.json["job_id"] for m in msgs]
        assert len(job_ids) == len(set(job_ids)) == len(names), "duplicates or losses"
        assert [m.json["source"]["name"] for m in msgs] == names   # in order
        events = [(m.topic, m.payload) for m in sub.messages if "/event/" in m.topic]
        assert len(events) == len(set(events)), "an event arrived twice"
    finally:
        agent.stop()
        sub.close()
        broker.stop()


def _drop_wavs(inbox, names):
    from tests.support.wavs import tone_wav
    inbox.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        tmp = inbox / f".{name}.part"
        tmp.write_bytes(tone_wav(0.2 + 0.01 * i))
        os.rename(tmp, inbox / name)
        time.sleep(0.5)   # each file complete (settle_ms) before the next: arrival order is job order
