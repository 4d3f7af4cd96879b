"""Home Assistant MQTT discovery on a real broker: retained, republished when Home Assistant comes
online, removed when disabled, moved with the device id, and a value for every entity.
"""

from __future__ import annotations

import json
import signal
import subprocess

from agent.ops.homeassistant import ALERT_KINDS
from agent.ops.last_values import TEXT_MAX_BYTES
from agent.ops.telemetry import TelemetryCollector
from agent.audio.wav import write_wav
from tests.support.http_stub import HTTPStub, json_reply
from tests.support.probe import Msg, Probe, retained
from tests.support.speech import UTTERANCES, build_speech
from tests.support.wavs import tone_wav
from tests.support.inbox import drop
from tests.support.wait import ECHO_FILTER, all_delivered, broker_echo, handled_before, wait_until
from tests.support.homeassistant import ALWAYS, OPTIONAL, RECORDER_ATTRS_MAX, attributes_size, render


DISCOVERY = "homeassistant/device/test-dev/config"


def test_discovery_retained_republished_on_ha_online_and_removed_when_disabled(make_agent, broker, probe):
    agent = make_agent({"homeassistant": {"enabled": True}}).start(probe)
    probe.wait_for(DISCOVERY, what="discovery document")
    kept = retained(broker.host, broker.port, DISCOVERY)
    assert kept is not None, "discovery document not retained"
    doc = kept.json
    assert doc["availability_topic"] == f"{agent.root}/availability"
    assert set(ALWAYS) <= set(doc["cmps"])
    # no microphone, telemetry off (the test default): no listening switch, speech or health sensors
    assert {k for k, c in doc["cmps"].items() if set(c) == {"p"}} == OPTIONAL
    assert doc["dev"]["ids"] and doc["o"]["name"] == "voice-agent"

    # Home Assistant restarts: it announces `online` and gets the document again
    before = len(probe.on(DISCOVERY))
    probe.publish("homeassistant/status", "online")
    probe.wait_for(DISCOVERY, lambda m: bool(m.payload), count=before + 1, what="republished discovery")
    probe.publish("homeassistant/status", "offline")   # ignored
    handled_before(probe, agent.root)
    assert len(probe.on(DISCOVERY)) == before + 1

    # the buttons reach the agent; the Paused binary sensor follows the retained state
    paused = doc["cmps"]["paused"]
    probe.publish(doc["cmps"]["pause"]["command_topic"], doc["cmps"]["pause"]["payload_press"])
    probe.wait_for(paused["state_topic"], lambda m: render(paused["value_template"], m.json) == "ON",
                   what="Paused on after the pause button")
    resumed = len([m for m in probe.on(f"{agent.root}/state") if m.json["paused"] is False])
    probe.publish(doc["cmps"]["resume"]["command_topic"], doc["cmps"]["resume"]["payload_press"])
    probe.wait_for(f"{agent.root}/state", lambda m: render(paused["value_template"], m.json) == "OFF",
                   count=resumed + 1, what="Paused off after the resume button")

    # telemetry switched on live: the document changes (health sensors) and is published again at once
    answer = probe.request(agent.root, "config/set", {"config": {"telemetry": {"interval_s": 1}}})
    assert answer["status"] == "ok", answer
    changed = probe.wait_for(DISCOVERY, lambda m: bool(m.payload) and "state_topic" in m.json["cmps"]["jobs_failed"],
                             what="discovery with the health sensors")[0].json
    assert changed["cmps"]["jobs_failed"]["state_topic"] == f"{agent.root}/last/telemetry"
    before = len([m for m in probe.on(DISCOVERY) if m.payload])

    # the state is checked for changes on every main-loop tick (an outbox alert does not pass
    # through events), but an idle agent publishes none. Telemetry (every 1 s) is sent by the same
    # loop right after that check: two more telemetry messages show two checks have happened.
    # One tick first: a change the agent had not yet published (e.g. right after its start) goes
    # out then, legitimately.
    def ticks(n: int) -> None:
        probe.wait_for(f"{agent.root}/telemetry", count=len(probe.on(f"{agent.root}/telemetry")) + n,
                       what=f"{n} main-loop tick(s) (telemetry)")
    ticks(1)
    all_delivered(probe, agent.root)
    idle = len(probe.on(f"{agent.root}/state"))
    ticks(2)
    assert len(probe.on(f"{agent.root}/state")) == idle, [m.payload.decode() for m in probe.on(f"{agent.root}/state")][-2:]

    # switched off live: the document is removed with an empty retained payload
    answer = probe.request(agent.root, "config/set", {"config": {"homeassistant": {"enabled": False}}})
    assert answer["status"] == "ok", answer
    probe.wait_for(DISCOVERY, lambda m: m.payload == b"", what="empty payload removing the device")
    assert retained(broker.host, broker.port, DISCOVERY, timeout=1.0) is None
    # ... and `homeassistant/status` no longer triggers anything
    n = len(probe.on(DISCOVERY))
    probe.publish("homeassistant/status", "online")
    handled_before(probe, agent.root)
    assert len(probe.on(DISCOVERY)) == n

    # switched on again: published again
    assert probe.request(agent.root, "config/set", {"config": {"homeassistant": {"enabled": True}}})["status"] == "ok"
    probe.wait_for(DISCOVERY, lambda m: bool(m.payload), count=before + 1, what="discovery after re-enabling")


def test_disabled_at_start_publishes_nothing(make_agent, broker, probe):
    probe.publish(DISCOVERY, json.dumps({"owned": "by someone else"}), retain=True)
    agent = make_agent().start(probe)
    assert probe.request(agent.root, "ping")["status"] == "ok"
    probe.publish("homeassistant/status", "online")
    handled_before(probe, agent.root)
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
    # device_id is set in the local config file only (not over MQTT); the agent applies the change live
    agent.write_config({**agent.config, "device_id": "test-dev-2"})
    agent.proc.send_signal(signal.SIGHUP)
    moved = probe.wait_for("homeassistant/device/test-dev-2/config", what="document of the new id")[0].json
    assert moved["availability_topic"] == "voice/test-dev-2/availability"
    probe.wait_for(DISCOVERY, lambda m: m.payload == b"", what="old document removed")
    assert retained(broker.host, broker.port, DISCOVERY, timeout=1.0) is None


LONG_TRANSCRIPT = ("Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich, sagte sie \"heute\" 🎙. " * 400)


def retained_snapshot(broker, topic_filter: str) -> dict[str, Msg]:
    """What a fresh subscriber (Home Assistant after a restart) gets as retained messages, by topic.

    The broker sends a subscription's retained messages when it handles the SUBSCRIBE; the probe
    then subscribes to a marker topic of its own and publishes there until the marker comes back:
    by then every retained message of the first subscription has arrived (instead of a sleep)."""
    fresh = Probe(broker.host, broker.port, subscribe=(topic_filter, ECHO_FILTER))
    try:
        broker_echo(fresh)
        return {m.topic: m for m in fresh.messages if m.retain and m.payload}
    finally:
        fresh.close()


def entity_values(doc: dict, snapshot: dict[str, Msg]) -> dict[str, tuple[str, dict | None]]:
    """(state, attributes) of every stateful entity, rendered from the retained messages as Home Assistant does."""
    values: dict[str, tuple[str, dict | None]] = {}
    for key, c in doc["cmps"].items():
        if c["p"] in ("event", "button") or "state_topic" not in c:
            continue
        msg = snapshot.get(c["state_topic"])
        assert msg is not None, f"{key}: nothing retained on {c['state_topic']}"
        state = render(c["value_template"], msg.json)
        attributes = None
        if "json_attributes_template" in c:
            attributes = json.loads(render(c["json_attributes_template"], snapshot[c["json_attributes_topic"]].json))
        values[key] = (state, attributes)
    return values


def test_every_entity_has_a_value_after_a_home_assistant_restart(make_agent, broker, probe, tmp_path):
    """A long transcript, speech heard, an alert raised and the agent paused; then a fresh subscriber
    (Home Assistant restarting) gets a value for every entity, bounded attributes included."""
    speech = build_speech(UTTERANCES[:1], lead_s=0.5, trail_s=1.0)
    write_wav(tmp_path / "speech.wav", speech.samples)
    with HTTPStub() as stub:
        stub.route("POST", "/v1/audio/transcriptions", lambda req: json_reply({"text": LONG_TRANSCRIPT}))
        agent = make_agent({
            "homeassistant": {"enabled": True}, "telemetry": {"interval_s": 1},
            "transcriber": {"engine": "openai", "openai": {"base_url": stub.url + "/v1", "api_key": "sk-test",
                                                           "model": "whisper-test"}},
        }, args=["--listen-wav", str(tmp_path / "speech.wav")]).start(probe)
        doc = probe.wait_for(DISCOVERY, what="discovery document")[0].json
        # a microphone (here a WAV file) and telemetry: the optional entities are there
        assert doc["cmps"]["listening"]["p"] == "switch" and "state_topic" in doc["cmps"]["listening"]
        assert "state_topic" in doc["cmps"]["speech"] and "state_topic" in doc["cmps"]["jobs_failed"]
        has_thermometer = TelemetryCollector().temperature() is not None
        assert ("state_topic" in doc["cmps"]["temperature"]) == has_thermometer

        probe.wait_for(f"{agent.root}/event/vad", lambda m: m.json["event"] == "speech_end", timeout=30,
                       what="speech_end from the WAV")
        transcript = probe.wait_for(f"{agent.root}/event/transcript", timeout=60, what="transcript")[0].json
        assert transcript["text"] == LONG_TRANSCRIPT.strip() or transcript["text"] == LONG_TRANSCRIPT
        probe.wait_for(f"{agent.root}/event/summary", timeout=60, what="summary")
        answer = probe.request(agent.root, "config/set", {"config": {"memory": {"min_disk_free_mb": 1e9}}})
        assert answer["status"] == "ok", answer
        probe.wait_for(f"{agent.root}/state", lambda m: m.json.get("alerts", {}).get("disk") == "critical",
                       what="the disk alert in the retained state")
        assert probe.request(agent.root, "pause")["status"] == "ok"
        probe.wait_for(f"{agent.root}/state", lambda m: m.json["paused"] is True, what="paused state")
        probe.wait_for(f"{agent.root}/last/telemetry", lambda m: m.json["jobs"]["done"] >= 1,
                       what="telemetry copy after the job")

        # every entity's state topic has been published (the copies in last/ follow their events)
        topics = {c["state_topic"] for c in doc["cmps"].values() if "state_topic" in c and c["p"] not in ("event",)}
        wait_until(lambda: all(any(m.payload for m in probe.on(t)) for t in topics), 30,
                   f"a message on each of {sorted(topics)}")
        # Home Assistant restarts: a new subscriber, nothing but retained messages
        snapshot = retained_snapshot(broker, f"{agent.root}/#")
        values = entity_values(doc, snapshot)
        stateful = {k for k, c in doc["cmps"].items() if c["p"] not in ("event", "button") and "state_topic" in c}
        assert set(values) == stateful and len(stateful) >= 19
        for key, (state, _) in values.items():
            assert state not in ("", "None") or (key == "temperature" and not has_thermometer), (key, state)
        assert values["paused"][0] == "ON" and values["disk_alert"][0] == "ON"
        assert values["disk_alert"][1] == {"level": "critical"}
        assert all(values[f"{kind}_alert"][0] == "OFF" for kind in ALERT_KINDS if kind != "disk")
        assert values["speech"][0] == "OFF" and values["listening"][0] == "OFF"   # paused: not listening
        assert int(values["jobs_failed"][0]) == 0 and int(values["inbox_waiting"][0]) == 0
        assert 0 < float(values["memory_used"][0]) <= 100
        text, attributes = values["last_transcript"]
        assert LONG_TRANSCRIPT.startswith(text) and 250 <= len(text) <= 255   # HA strips the rendered state
        assert attributes["truncated"] is True and LONG_TRANSCRIPT.startswith(attributes["text"])
        assert attributes["chars"] == len(transcript["text"]) and attributes["job_id"] == transcript["job_id"]
        assert attributes_size(attributes) < RECORDER_ATTRS_MAX
        assert values["last_summary"][0] and attributes_size(values["last_summary"][1]) < RECORDER_ATTRS_MAX
        # bounded on the broker too: the retained copy is far below the full text
        assert len(snapshot[f"{agent.root}/last/transcript"].payload) < TEXT_MAX_BYTES + 1000 < len(
            LONG_TRANSCRIPT.encode())

        # the agent restarts (without the WAV: no new transcript): the copies survive it, speech starts `false`
        agent.terminate()
        agent.args = []
        agent.start(probe)
        after = retained_snapshot(broker, f"{agent.root}/#")
        assert after[f"{agent.root}/last/transcript"].json["job_id"] == transcript["job_id"]
        assert after[f"{agent.root}/last/speech"].json["speaking"] is False


def test_listening_switch_closes_the_microphone_only_and_answers_match_the_state(make_agent, broker, probe):
    """The switch's command closes the microphone; the inbox goes on and nothing is paused. Every
    answer says what the retained state says right after it (the microphone opens asynchronously)."""
    agent = make_agent({"homeassistant": {"enabled": True}}, args=["--listen-stdin"])
    agent.start(probe, stdin=subprocess.PIPE)   # raw audio that never comes: the stream stays open
    try:
        doc = probe.wait_for(DISCOVERY, what="discovery document")[0].json
        switch, paused = doc["cmps"]["listening"], doc["cmps"]["paused"]
        state = f"{agent.root}/state"
        probe.wait_for(state, lambda m: m.json["listening"] is True, what="listening at start")

        n = len(probe.on(f"{agent.root}/response/listening"))
        probe.publish(switch["command_topic"], render(switch["command_template"], value="OFF"))
        answer = probe.wait_for(f"{agent.root}/response/listening", count=n + 1, what="answer to the switch")[-1].json
        assert answer["status"] == "ok" and answer["data"] == {"paused": False, "listening": False}
        latest = probe.wait_for(state, lambda m: render(switch["value_template"], m.json) == "OFF",
                                what="switch off in the state")[-1].json
        assert render(paused["value_template"], latest) == "OFF"   # the agent is not paused
        drop(agent.inbox, "while-mic-off.wav", tone_wav(0.5))
        probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["name"] == "while-mic-off.wav",
                       what="the inbox still working with the microphone off")

        # every answer says what the retained state says a moment later
        for command, body, expected in (("listening", {"listening": True}, {"paused": False, "listening": True}),
                                        ("pause", {}, {"paused": True, "listening": False}),
                                        ("resume", {}, {"paused": False, "listening": True})):
            answer = probe.request(agent.root, command, body)
            assert answer["data"] == expected, (command, answer)
            wait_until(lambda: {k: v for k, v in retained(broker.host, broker.port, state).json.items()
                                if k in expected} == expected, 10, f"the retained state after {command}")
    finally:
        agent.stop()


def test_listening_without_a_microphone_is_refused(make_agent, probe):
    agent = make_agent().start(probe)
    answer = probe.request(agent.root, "listening", {"listening": False})
    assert answer["status"] == "error" and answer["error"]["code"] == "bad_request"
    assert "microphone" in answer["error"]["message"]
    assert probe.request(agent.root, "state")["data"]["paused"] is False
