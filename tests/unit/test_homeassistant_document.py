"""The Home Assistant discovery document itself (pure): shape, entities, bounded text."""

from __future__ import annotations

import json

import pytest

from agent.ops.homeassistant import ALERT_KINDS, ATTR_TEXT_MAX, Features, discovery_config
from agent.ops.last_values import TEXT_MAX_BYTES, TEXT_MAX_CHARS, bounded_text, copy_of
from agent.mqtt.messages import envelope
from agent.ops.telemetry import TelemetryCollector
from agent.mqtt.topics import Topics
from tests.support.homeassistant import ALL, ALWAYS, OPTIONAL, RECORDER_ATTRS_MAX, attributes_size, render


TOPICS = Topics("voice", "test-dev")


@pytest.fixture(scope="module")
def doc() -> dict:
    return discovery_config(TOPICS, "9.9.9", ALL)


def test_device_document_shape(doc):
    assert doc["dev"]["ids"] and doc["dev"]["name"] == "test-dev" and doc["dev"]["sw"] == "9.9.9"
    assert doc["o"]["name"] == "voice-agent"
    assert doc["availability_topic"] == "voice/test-dev/availability"
    assert (doc["payload_available"], doc["payload_not_available"]) == ("online", "offline")
    assert set(ALERT_KINDS) == {"engine", "disk", "capture", "outbox", "config", "memory"}
    platforms = {key: c["p"] for key, c in doc["cmps"].items()}
    assert platforms == {**ALWAYS, "vad": "event", "speech": "binary_sensor", "listening": "switch", "wake": "event",
                         **{k: "sensor" for k in OPTIONAL - {"vad", "speech", "listening", "wake"}}}
    unique = [c["unique_id"] for c in doc["cmps"].values()]
    assert len(set(unique)) == len(unique) and all("test-dev" in u for u in unique)
    json.dumps(doc)   # serialisable as is


def test_what_the_device_lacks_is_sent_as_platform_only():
    """No microphone, telemetry off: those components are Home Assistant's removal stubs {"p": ...}."""
    bare = discovery_config(TOPICS, "1", Features())["cmps"]
    assert {k for k, c in bare.items() if set(c) == {"p"}} == OPTIONAL
    assert all(len(bare[k]) > 1 for k in ALWAYS)
    no_thermometer = discovery_config(TOPICS, "1", Features(telemetry=True))["cmps"]
    assert no_thermometer["temperature"] == {"p": "sensor"} and "state_topic" in no_thermometer["memory_used"]
    assert no_thermometer["listening"] == {"p": "switch"} and no_thermometer["speech"] == {"p": "binary_sensor"}


def test_sensors_read_retained_topics_only_events_read_events(doc):
    """Every stateful entity reads `state` or `last/*` (retained); only event entities read events."""
    for key, c in doc["cmps"].items():
        if "state_topic" not in c:
            continue
        if c["p"] == "event":
            assert "/event/" in c["state_topic"], key
        else:
            assert c["state_topic"] in ("voice/test-dev/state", "voice/test-dev/health") \
                or c["state_topic"].startswith("voice/test-dev/last/"), key


def test_health_problem_sensor_and_restart_button(doc):
    health, restart = doc["cmps"]["health"], doc["cmps"]["restart"]
    assert health["state_topic"] == health["json_attributes_topic"] == "voice/test-dev/health"
    body = {"status": "degraded", "reasons": [{"check": "memory", "status": "degraded", "detail": "memory level warning"}]}
    assert render(health["value_template"], body) == "ON"
    assert render(health["value_template"], {"status": "ok", "reasons": []}) == "OFF"
    assert json.loads(render(health["json_attributes_template"], body)) == {
        "status": "degraded", "reasons": ["memory level warning"]}
    assert restart["p"] == "button" and restart["device_class"] == "restart"
    assert restart["command_topic"] == "voice/test-dev/request/restart" and restart["payload_press"] == "{}"


def test_event_entities_get_an_event_type_and_bounded_text(doc):
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
    assert out["truncated"] is False
    long_text = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. " * 500   # 33,000 characters
    out = json.loads(render(transcript["value_template"], {"job_id": "j", "text": long_text}))
    assert out["truncated"] is True and long_text.startswith(out["text"]) and len(out["text"]) == ATTR_TEXT_MAX
    assert attributes_size(out) < RECORDER_ATTRS_MAX


def test_text_sensors_read_the_bounded_retained_copies(doc):
    long_text = "word \"quoted\" ünïcödé 🎙 " * 2000
    for key, event in (("last_transcript", "transcript"), ("last_summary", "summary")):
        sensor = doc["cmps"][key]
        assert sensor["state_topic"] == sensor["json_attributes_topic"] == f"voice/test-dev/last/{event}"
        name, copy = copy_of(event, {"job_id": "j1", "text": long_text, "engine": "x", "source": {"kind": "inbox"},
                                     "timings_ms": {"total": 1.0}})
        assert name == event and copy["truncated"] is True and copy["chars"] == len(long_text)
        assert "timings_ms" not in copy and long_text.startswith(copy["text"])
        payload = json.loads(envelope("test-dev", copy))   # as published
        state = render(sensor["value_template"], payload)
        assert 0 < len(state) <= 255 and long_text.startswith(state)
        attributes = json.loads(render(sensor["json_attributes_template"], payload))
        assert attributes["text"] == copy["text"] and attributes["truncated"] is True and attributes["job_id"] == "j1"
        assert attributes["chars"] == len(long_text) and attributes_size(attributes) < RECORDER_ATTRS_MAX
    short = copy_of("transcript", {"job_id": "j2", "text": "Turn on the light.", "language": "en"})[1]
    assert short == {"job_id": "j2", "language": "en", "text": "Turn on the light.", "truncated": False, "chars": 18}


def test_bounded_text_counts_escaped_bytes():
    for text in ("\x01" * 5000, '"' * 9000, "🎙" * 5000, "a" * 100):
        cut, truncated = bounded_text(text)
        assert text.startswith(cut) and truncated == (cut != text)
        assert len(cut) <= TEXT_MAX_CHARS and len(json.dumps(cut, ensure_ascii=False).encode()) <= TEXT_MAX_BYTES
    assert bounded_text("a" * 100) == ("a" * 100, False)


def test_state_sensors_problem_sensors_buttons_and_switch(doc):
    c = doc["cmps"]
    state = {"memory_level": "warning", "jobs": {"running": 1, "limit": 2}, "listening": True, "paused": False,
             "started_at": "2026-11-24T11:47:17.520Z", "alerts": {"disk": "critical", "engine": "warning"}}
    assert c["memory_level"]["state_topic"] == "voice/test-dev/state"
    assert render(c["memory_level"]["value_template"], state) == "warning" in c["memory_level"]["options"]
    assert render(c["jobs_running"]["value_template"], state) == "1"
    assert render(c["started"]["value_template"], state) == "2026-11-24T11:47:17.520Z"
    assert c["started"]["device_class"] == "timestamp"
    assert render(c["paused"]["value_template"], state) == "OFF" == c["paused"]["payload_off"]
    assert render(c["paused"]["value_template"], {**state, "paused": True}) == "ON" == c["paused"]["payload_on"]
    for kind in ALERT_KINDS:
        sensor = c[f"{kind}_alert"]
        assert sensor["device_class"] == "problem" and sensor["state_topic"] == "voice/test-dev/state"
        expected = state["alerts"].get(kind, "ok")
        assert render(sensor["value_template"], state) == ("OFF" if expected == "ok" else "ON")
        assert json.loads(render(sensor["json_attributes_template"], state)) == {"level": expected}
        assert render(sensor["value_template"], {**state, "alerts": {}}) == "OFF"
        assert render(sensor["value_template"], {"paused": False}) == "OFF"   # an older agent: no `alerts`
    assert render(c["speech"]["value_template"], {"speaking": True}) == "ON"
    assert render(c["speech"]["value_template"], {"speaking": False}) == "OFF"
    assert c["speech"]["state_topic"] == "voice/test-dev/last/speech"
    assert (c["pause"]["command_topic"], c["pause"]["payload_press"]) == ("voice/test-dev/request/pause", "{}")
    assert (c["resume"]["command_topic"], c["resume"]["payload_press"]) == ("voice/test-dev/request/resume", "{}")
    switch = c["listening"]
    assert render(switch["value_template"], state) == "ON" == switch["state_on"]
    assert render(switch["value_template"], {**state, "listening": False}) == "OFF" == switch["state_off"]
    assert switch["command_topic"] == "voice/test-dev/request/listening"
    assert json.loads(render(switch["command_template"], value="ON")) == {"listening": True}
    assert json.loads(render(switch["command_template"], value="OFF")) == {"listening": False}


def test_health_sensors_read_telemetry_as_the_agent_builds_it(doc, tmp_path):
    """Rendered against a real telemetry body from TelemetryCollector (the figures of this machine)."""
    collector = TelemetryCollector(lambda: [tmp_path])
    body = collector.collect({"uptime_s": 12.5, "memory_level": "ok", "alerts": []})
    body.update({"jobs": {"done": 3, "failed": 2, "rejected": 1, "running": 0, "limit": 1},
                 "inbox": {"waiting": 7}, "outbox": {"queued": 4}})
    c = doc["cmps"]
    expected = {"jobs_failed": "2", "jobs_rejected": "1", "inbox_waiting": "7", "outbox_queued": "4",
                "memory_used": str(body["memory"]["used_percent"]), "temperature": str(body["temperature_c"])}
    for key, value in expected.items():
        assert c[key]["state_topic"] == "voice/test-dev/last/telemetry"
        assert render(c[key]["value_template"], body) == value, key
    assert c["temperature"]["unit_of_measurement"] == "°C" and c["memory_used"]["unit_of_measurement"] == "%"


def test_wake_word_event_entity_has_one_event_type_per_model(doc):
    wake = doc["cmps"]["wake"]
    assert wake["state_topic"] == "voice/test-dev/event/wake" and wake["event_types"] == ["okay_nabu", "alexa"]
    out = json.loads(render(wake["value_template"], {"model": "alexa", "probability": 0.93, "at_s": 1.5, "ts": "x"}))
    assert out == {"event_type": "alexa", "probability": 0.93}
    no_models = discovery_config(TOPICS, "1", Features(microphone=True))["cmps"]
    assert no_models["wake"] == {"p": "event"}   # a microphone without wake word models: no entity
