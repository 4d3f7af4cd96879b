"""The agent in a real Home Assistant's Assist (2025.4 from PyPI), over Home Assistant's own
`wyoming` integration: as the speech-to-text of an Assist pipeline and as a satellite.

Home Assistant runs headless in its own Python 3.13 venv (`scripts/homeassistant-venv`, which
also installs what Assist needs; without it this test is skipped, saying how to get it). The
agent is `voice-agent run` with Wyoming on loopback, the real faster-whisper engine (Whisper base
from the PyPI model packages) and a microphone on standard input. Home Assistant is set up as a
user does it: onboarding, then Settings → Add integration → Wyoming Protocol twice (its config
flow over the REST API: host 127.0.0.1, the speech-to-text port, then the satellite port; a real
network would find both over zeroconf, which a sandbox does not carry). The Assist pipeline that
uses the agent as speech-to-text, with Home Assistant's own conversation agent, is stored before
the start (what Settings → Voice assistants writes). A test light (a template light over an
`input_boolean`) stands for the kitchen light.

- speech-to-text: a WAV posted to Home Assistant's STT API (POST /api/stt/<entity>) comes back
  with the agent's transcript, and the agent published that job on MQTT;
- satellite: "turn on the kitchen light" spoken into the agent's microphone goes to Home
  Assistant as a pipeline run, and the light turns on; Home Assistant then restarts, reconnects to
  the satellite, and "turn off the kitchen light" turns it off again; then the agent is stopped,
  Home Assistant restarts without waiting for it, and the agent's return is picked up.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("wyoming")
pytest.importorskip("faster_whisper")

from agent.audio.wav import write_wav  # noqa: E402
from tests.e2e.test_homeassistant_real import HASS, HomeAssistant  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
from tests.support.probe import Probe  # noqa: E402
from tests.support.speech import silence, utterance  # noqa: E402

DEVICE = "test-dev"
STT_ENTITY = "stt.voice_agent_test_dev"   # the integration names it after the service: "voice-agent test-dev"
LIGHT = "light.kitchen_light"

pytestmark = [
    pytest.mark.homeassistant,
    pytest.mark.skipif(not HASS.exists(), reason=f"no Home Assistant at {HASS}: run `make homeassistant-test` "
                                                 "(scripts/homeassistant-venv installs it; needs Python 3.13)"),
]

LIGHT_YAML = """
input_boolean:
  kitchen_power:
    name: Kitchen power
light:
  - platform: template
    lights:
      kitchen_light:
        unique_id: kitchen_light
        friendly_name: Kitchen light
        value_template: "{{ is_state('input_boolean.kitchen_power', 'on') }}"
        turn_on:
          action: input_boolean.turn_on
          target: {entity_id: input_boolean.kitchen_power}
        turn_off:
          action: input_boolean.turn_off
          target: {entity_id: input_boolean.kitchen_power}
"""


def seed_pipeline(config_dir: Path) -> None:
    """The preferred Assist pipeline: the agent's speech-to-text, Home Assistant's conversation
    agent, no text-to-speech (nothing here could speak)."""
    pipeline = {"id": "voice-agent-pipeline", "name": "voice-agent", "language": "en",
                "conversation_engine": "conversation.home_assistant", "conversation_language": "en",
                "stt_engine": STT_ENTITY, "stt_language": "en", "tts_engine": None, "tts_language": None,
                "tts_voice": None, "wake_word_entity": None, "wake_word_id": None, "prefer_local_intents": False}
    storage = config_dir / ".storage"
    storage.mkdir(parents=True, exist_ok=True)
    (storage / "assist_pipeline.pipelines").write_text(json.dumps({
        "version": 1, "minor_version": 2, "key": "assist_pipeline.pipelines",
        "data": {"items": [pipeline], "preferred_item": pipeline["id"]}}))


def add_wyoming(ha: HomeAssistant, port: int) -> dict:
    """Settings → Add integration → Wyoming Protocol, host and port (its config flow)."""
    flow = ha.call("POST", "/api/config/config_entries/flow", {"handler": "wyoming", "show_advanced_options": False})
    flow = ha.call("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"host": "127.0.0.1", "port": port})
    assert flow["type"] == "create_entry", flow
    return flow


def state(ha: HomeAssistant, entity_id: str) -> str | None:
    try:
        return ha.call("GET", f"/api/states/{entity_id}")["state"]
    except OSError:   # HTTPError included: the entity may not exist yet
        return None


def wait_state(ha: HomeAssistant, entity_id: str, wanted: str, agent: AgentProcess, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state(ha, entity_id) == wanted:
            return
        time.sleep(0.3)
    raise AssertionError(f"{entity_id} not {wanted} (is {state(ha, entity_id)}) within {timeout} s\n"
                         f"agent log:\n{agent.log()[-3000:]}\nHA log:\n{ha.log_text()[-3000:]}")


def wait_log(agent: AgentProcess, text: str, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while agent.log().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent.log().count(text) >= count, f"{text!r} x{count} not in the agent's log:\n{agent.log()[-3000:]}"


def say(agent: AgentProcess, text: str) -> None:
    """Speak into the agent's microphone (its standard input: 16 kHz mono s16le)."""
    samples = np.concatenate([silence(0.5), utterance(text), silence(2.0)])
    agent.proc.stdin.write(samples.astype("<i2").tobytes())
    agent.proc.stdin.flush()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wyoming-ha")
    broker = Broker(tmp / "broker").start()
    probe = Probe(broker.host, broker.port)
    stt_port, sat_port = free_port(), free_port()
    agent = AgentProcess(tmp / "agent", broker.port, {
        "transcriber": {"engine": "faster_whisper", "faster_whisper": {"model": "base", "threads": 2}},
        "summarizer": {"engine": "none"},
        "wyoming": {"enabled": True, "stt_port": stt_port, "port": sat_port},
    }, device_id=DEVICE, args=["--listen-stdin"])
    agent.start(probe, stdin=subprocess.PIPE)
    ha = HomeAssistant(tmp / "ha")
    with open(ha.config_dir / "configuration.yaml", "a") as f:
        f.write(LIGHT_YAML)
    seed_pipeline(ha.config_dir)
    try:
        ha.start()
        ha.onboard()
        add_wyoming(ha, stt_port)
        add_wyoming(ha, sat_port)
        yield ha, agent, probe
    finally:
        ha.stop()
        agent.stop()
        probe.close()
        broker.stop()


def test_home_assistant_stt_api_returns_the_agents_transcript(setup, tmp_path):
    ha, agent, probe = setup
    wav = tmp_path / "ask.wav"
    write_wav(wav, np.concatenate([silence(0.3), utterance("what time is it"), silence(0.3)]))
    request = urllib.request.Request(
        f"{ha.url}/api/stt/{STT_ENTITY}", data=wav.read_bytes(), method="POST",
        headers={"Authorization": f"Bearer {ha.token}", "X-Speech-Content":
                 "format=wav; codec=pcm; sample_rate=16000; bit_rate=16; channel=1; language=en"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        result = json.loads(answer.read())
    assert result["result"] == "success", result
    assert "what time is it" in result["text"].lower(), result
    # the same job, through the agent's own job slot, on MQTT
    published = probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["kind"] == "wyoming",
                               what="the Wyoming job's transcript on MQTT")[-1].json
    assert published["text"] == result["text"], (published, result)
    print(f"\nPOST /api/stt/{STT_ENTITY}: {json.dumps(result)}\nevent/transcript: {json.dumps(published)}")


def test_satellite_utterance_turns_on_the_light_and_survives_a_home_assistant_restart(setup):
    ha, agent, probe = setup
    wait_state(ha, LIGHT, "off", agent)
    wait_log(agent, "is ready for pipelines", 1)   # Home Assistant sent run-satellite
    t0 = time.monotonic()
    say(agent, "turn on the kitchen light")
    wait_state(ha, LIGHT, "on", agent)
    on_s = time.monotonic() - t0
    assist = probe.wait_for(f"{agent.root}/event/assist", lambda m: m.json["event"] == "transcript",
                            what="Home Assistant's transcript on MQTT")[-1].json
    assert "kitchen light" in assist["text"].lower(), assist
    run = [m.json for m in probe.on(f"{agent.root}/event/assist") if m.json["event"] == "run_pipeline"]
    assert run and run[0]["end_stage"] == "handle" and run[0]["sent"], run   # no output device: no TTS

    # Home Assistant restarts; the satellite is found again without touching the agent
    ha.stop()
    ha.start()
    ha.login()
    wait_log(agent, "is ready for pipelines", 2)
    say(agent, "turn off the kitchen light")
    wait_state(ha, LIGHT, "off", agent)

    # the device is away while Home Assistant restarts: Home Assistant's start does not wait for it,
    # and the device is taken back once it returns
    assert agent.terminate(timeout=30) == 0
    ha.stop()
    ha.start()
    ha.login()
    agent.start(probe, stdin=subprocess.PIPE)
    wait_log(agent, "is ready for pipelines", 3, timeout=120)
    say(agent, "turn on the kitchen light")
    wait_state(ha, LIGHT, "on", agent)
    print(f"\nutterance written to light on: {on_s:.1f} s; event/assist:",
          *(json.dumps(m.json) for m in probe.on(f"{agent.root}/event/assist")[:3]), sep="\n")
    waits = [line for line in ha.log_text().splitlines() if "Waiting on integrations" in line
             or ("wyoming" in line and "is taking over" in line)]
    assert not waits, waits
    assert "Traceback" not in agent.log()
