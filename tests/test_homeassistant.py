"""Home Assistant MQTT discovery: the document itself (pure) and its life on a real broker."""

from __future__ import annotations

import json
import time

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent.homeassistant import discovery_config
from agent.topics import Topics
from tests.support.probe import retained

DISCOVERY = "homeassistant/device/test-dev/config"
TOPICS = Topics("voice", "test-dev")
ENV = ImmutableSandboxedEnvironment()   # Home Assistant templates are sandboxed Jinja2


def render(template: str, payload: dict | None = None, **variables) -> str:
    """Render a template the way Home Assistant's MQTT integration does (value_json = the payload)."""
    return ENV.from_string(template).render(value_json=payload, **variables).strip()


@pytest.fixture(scope="module")
def doc() -> dict:
    return discovery_config(TOPICS, "9.9.9")


def test_device_document_shape(doc):
    assert doc["dev"]["ids"] and doc["dev"]["name"] == "test-dev" and doc["dev"]["sw"] == "9.9.9"
    assert doc["o"]["name"] == "voice-agent"
    assert doc["availability_topic"] == "voice/test-dev/availability"
    assert (doc["payload_available"], doc["payload_not_available"]) == ("online", "offline")
    platforms = {key: c["p"] for key, c in doc["cmps"].items()}
    assert platforms == {"vad": "event", "transcript": "event", "last_transcript": "sensor",
                         "last_summary": "sensor", "memory_level": "sensor", "jobs_running": "sensor",
                         "speech": "binary_sensor", "pause": "button", "resume": "button", "listening": "switch"}
    unique = [c["unique_id"] for c in doc["cmps"].values()]
    assert len(set(unique)) == len(unique) and all("test-dev" in u for u in unique)
    json.dumps(doc)   # serialisable as is


def test_event_entities_get_an_event_type(doc):
    vad = doc["cmps"]["vad"]
    assert vad["state_topic"] == "voice/test-dev/event/vad"
    assert vad["event_types"] == ["speech_start", "speech_end"]
    for kind in ("speech_start", "speech_end"):
        out = json.loads(render(vad["value_template"], {"event": kind, "segment_id": "s1", "ts": "x"}))
        assert out == {"event_type": kind, "segment_id": "s1"}
    transcript = doc["cmps"]["transcript"]
    assert transcript["state_topic"] == "voice/test-dev/event/transcript" and transcript["event_types"] == ["transcript"]
    out = json.loads(render(transcript["value_template"], {"job_id": "j", "text": 'he said "hi" <b>', "language": "en",
                                                           "source": {"kind": "inbox", "name": "a.wav"}}))
    assert out["event_type"] == "transcript" and out["text"] == 'he said "hi" <b>' and out["job_id"] == "j"


def test_text_sensors_cut_state_and_keep_full_text_as_attribute(doc):
    long_text = "word " * 200
    for key, topic in (("last_transcript", "transcript"), ("last_summary", "summary")):
        sensor = doc["cmps"][key]
        assert sensor["state_topic"] == sensor["json_attributes_topic"] == f"voice/test-dev/event/{topic}"
        payload = {"job_id": "j1", "text": long_text, "engine": "x", "ts": "t"}
        state = render(sensor["value_template"], payload)
        assert len(state) <= 255 and long_text.startswith(state)
        attributes = json.loads(render(sensor["json_attributes_template"], payload))
        assert attributes["text"] == long_text and attributes["job_id"] == "j1"


def test_state_sensors_binary_sensor_buttons_and_switch(doc):
    c = doc["cmps"]
    state = {"memory_level": "warning", "jobs": {"running": 1, "limit": 2}, "listening": True, "paused": False}
    assert c["memory_level"]["state_topic"] == "voice/test-dev/state"
    assert render(c["memory_level"]["value_template"], state) == "warning" in c["memory_level"]["options"]
    assert render(c["jobs_running"]["value_template"], state) == "1"
    assert render(c["speech"]["value_template"], {"event": "speech_start"}) == "ON"
    assert render(c["speech"]["value_template"], {"event": "speech_end"}) == "OFF"
    assert (c["pause"]["command_topic"], c["pause"]["payload_press"]) == ("voice/test-dev/request/pause", "{}")
    assert (c["resume"]["command_topic"], c["resume"]["payload_press"]) == ("voice/test-dev/request/resume", "{}")
    switch = c["listening"]
    assert render(switch["value_template"], state) == "ON" == switch["state_on"]
    assert render(switch["value_template"], {**state, "listening": False}) == "OFF" == switch["state_off"]
    assert switch["command_topic"] == "voice/test-dev/request/listening"
    assert json.loads(render(switch["command_template"], value="ON")) == {"listening": True}
    assert json.loads(render(switch["command_template"], value="OFF")) == {"listening": False}


# --- on a real broker ------------------------------------------------------------------------


def test_discovery_retained_republished_on_ha_online_and_removed_when_disabled(make_agent, broker, probe):
    agent = make_agent({"homeassistant": {"enabled": True}}).start(probe)
    probe.wait_for(DISCOVERY, what="discovery document")
    kept = retained(broker.host, broker.port, DISCOVERY)
    assert kept is not None, "discovery document not retained"
    doc = kept.json
    assert doc["availability_topic"] == f"{agent.root}/availability"
    assert {"vad", "transcript", "last_transcript", "last_summary", "memory_level", "jobs_running", "speech",
            "pause", "resume", "listening"} <= set(doc["cmps"])
    assert doc["dev"]["ids"] and doc["o"]["name"] == "voice-agent"

    # Home Assistant restarts: it announces `online` and gets the document again
    before = len(probe.on(DISCOVERY))
    probe.publish("homeassistant/status", "online")
    probe.wait_for(DISCOVERY, lambda m: bool(m.payload), count=before + 1, what="republished discovery")
    probe.publish("homeassistant/status", "offline")   # ignored
    time.sleep(0.3)
    assert len(probe.on(DISCOVERY)) == before + 1

    # the switch's command reaches the agent through the `listening` command
    probe.publish(doc["cmps"]["listening"]["command_topic"], json.dumps({"listening": False}))
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["paused"] is True, what="paused by the switch")
    resumed = len([m for m in probe.on(f"{agent.root}/state") if m.json["paused"] is False])
    probe.publish(doc["cmps"]["resume"]["command_topic"], doc["cmps"]["resume"]["payload_press"])
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["paused"] is False, count=resumed + 1,
                   what="resumed by the button")

    # switched off live: the document is removed with an empty retained payload
    answer = probe.request(agent.root, "config/set", {"config": {"homeassistant": {"enabled": False}}})
    assert answer["status"] == "ok", answer
    probe.wait_for(DISCOVERY, lambda m: m.payload == b"", what="empty payload removing the device")
    assert retained(broker.host, broker.port, DISCOVERY, timeout=1.0) is None
    # ... and `homeassistant/status` no longer triggers anything
    n = len(probe.on(DISCOVERY))
    probe.publish("homeassistant/status", "online")
    time.sleep(0.5)
    assert len(probe.on(DISCOVERY)) == n

    # switched on again: published again
    assert probe.request(agent.root, "config/set", {"config": {"homeassistant": {"enabled": True}}})["status"] == "ok"
    probe.wait_for(DISCOVERY, lambda m: bool(m.payload), count=before + 2, what="discovery after re-enabling")


def test_disabled_at_start_publishes_nothing(make_agent, broker, probe):
    probe.publish(DISCOVERY, json.dumps({"owned": "by someone else"}), retain=True)
    agent = make_agent().start(probe)
    assert probe.request(agent.root, "ping")["status"] == "ok"
    probe.publish("homeassistant/status", "online")
    time.sleep(0.5)
    assert [m.payload for m in probe.on("homeassistant/device/#")] == [b'{"owned": "by someone else"}']
    assert retained(broker.host, broker.port, DISCOVERY).json == {"owned": "by someone else"}


def test_custom_prefix_and_memory_level_in_state(make_agent, broker, probe):
    agent = make_agent({"homeassistant": {"enabled": True, "discovery_prefix": "ha"}}).start(probe)
    doc = probe.wait_for("ha/device/test-dev/config", what="discovery under a custom prefix")[0].json
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["memory_level"] in doc["cmps"]["memory_level"]["options"],
                   what="memory_level in the retained state")
    before = len(probe.on("ha/device/test-dev/config"))
    probe.publish("ha/status", "online")
    probe.wait_for("ha/device/test-dev/config", count=before + 1, what="republished on ha/status")
    assert not probe.on("homeassistant/#")


def test_device_id_change_moves_the_document(make_agent, broker, probe):
    agent = make_agent({"homeassistant": {"enabled": True}}).start(probe)
    probe.wait_for(DISCOVERY, what="discovery document")
    answer = probe.request(agent.root, "config/set", {"config": {"device_id": "test-dev-2"}},
                           response_topic="reply/ha-test")   # the answer leaves from the new link
    assert answer["status"] == "ok", answer
    moved = probe.wait_for("homeassistant/device/test-dev-2/config", what="document of the new id")[0].json
    assert moved["availability_topic"] == "voice/test-dev-2/availability"
    probe.wait_for(DISCOVERY, lambda m: m.payload == b"", what="old document removed")
    assert retained(broker.host, broker.port, DISCOVERY, timeout=1.0) is None
