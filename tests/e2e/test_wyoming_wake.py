"""The Wyoming wake service: `voice-agent run` as a subprocess with Wyoming on loopback and a wake
word configured (the real microWakeWord engine), a Wyoming client that sends what Home
Assistant's wake word entity sends (detect, audio-start, chunks, audio-stop) and espeak-ng speech.
Observed through the Wyoming socket and the agent's log only.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("wyoming")
pytest.importorskip("pymicro_wakeword", reason="the wake word extra is not installed (pip install '.[wake]')")

from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.info import Describe  # noqa: E402
from wyoming.ping import Ping  # noqa: E402
from wyoming.wake import Detect  # noqa: E402

from tests.e2e.test_homeassistant_real import HASS  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
from tests.support.probe import Probe  # noqa: E402
from tests.support.speech import silence, utterance  # noqa: E402
from tests.support.wyoming_client import WyomingClient  # noqa: E402

RATE = 16000


@pytest.fixture
def agent(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    probe = Probe(broker.host, broker.port)
    port = free_port()
    agent = AgentProcess(tmp_path / "agent", broker.port, {
        "summarizer": {"engine": "none"},
        "listen": {"wake_word": {"engine": "micro", "models": ["okay_nabu", "alexa"]}},
        "wyoming": {"enabled": True, "stt_port": port, "allow": ["127.0.0.1"]},
    })
    agent.start(probe)
    deadline = time.monotonic() + 20
    while "wyoming: serving" not in agent.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "wyoming: serving" in agent.log(), agent.log()[-2000:]
    agent.port = port
    yield agent
    agent.stop()
    probe.close()
    broker.stop()


def stream(client: WyomingClient, samples: np.ndarray, names: list[str] | None, chunk: int = 1024) -> None:
    """What Home Assistant's wyoming wake word entity sends, in 64 ms chunks."""
    client.send(Detect(names=names))
    client.send(AudioStart(rate=RATE, width=2, channels=1))
    pcm = samples.astype("<i2").tobytes()
    for i in range(0, len(pcm), chunk * 2):
        client.send(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[i:i + chunk * 2]))
    client.send(AudioStop())


def test_describe_advertises_the_wake_models_beside_the_transcriber(agent):
    client = WyomingClient(agent.port)
    client.send(Describe())
    info = client.read_until("info").data
    assert info["asr"], info
    [program] = info["wake"]
    assert [m["name"] for m in program["models"]] == ["okay_nabu", "alexa"], program
    assert program["models"][0]["phrase"] == "okay nabu" and program["installed"]
    client.close()


def test_okay_nabu_is_detected_and_a_stream_without_it_is_not(agent):
    phrase = utterance("okay nabu", "en-us")
    client = WyomingClient(agent.port)
    stream(client, np.concatenate([silence(1.0), phrase, silence(1.5)]), ["okay_nabu"])
    detection = client.read_until("detection", "not-detected", "error").data
    assert detection["name"] == "okay_nabu", detection
    # the phrase ends 1 s + its length into the stream; the model fires on its last syllable
    end_ms = 1000 + len(phrase) * 1000 // RATE
    assert end_ms - 800 <= detection["timestamp"] <= end_ms + 1000, (detection, end_ms)
    # after its detection the stream no longer holds the port: the speech-to-text that follows is served
    stt = WyomingClient(agent.port)
    stt.send(Describe())
    assert stt.read_until("info", "error").type == "info"
    stt.close()
    client.close()

    # the same connection flow without the phrase: Home Assistant is told the stream ended without it
    other = WyomingClient(agent.port)
    stream(other, np.concatenate([silence(0.5), utterance("turn on the kitchen light", "en-us"), silence(0.5)]),
           None)
    answer = other.read_until("detection", "not-detected", "error")
    assert answer.type == "not-detected", answer
    # the loop kept answering pings and the connection is still served
    other.send(Ping(text="still there"))
    assert other.read_until("pong").data.get("text") == "still there"
    other.close()


def test_a_running_wake_stream_holds_the_port(agent):
    client = WyomingClient(agent.port)
    client.send(Detect(names=None))
    client.send(AudioStart(rate=RATE, width=2, channels=1))
    client.send(AudioChunk(rate=RATE, width=2, channels=1, audio=silence(0.5).tobytes()))
    client.send(Ping())
    client.read_until("pong")   # the chunk was handled before the second connection comes
    second = WyomingClient(agent.port)
    second.send(Describe())
    assert second.read_until("error", "info").data.get("code") == "busy"
    second.close()
    client.send(AudioStop())
    assert client.read_until("detection", "not-detected").type == "not-detected"
    client.close()


def test_a_model_that_is_not_configured_is_answered_with_an_error(agent):
    client = WyomingClient(agent.port)
    client.send(Detect(names=["hey_jarvis"]))
    error = client.read_until("error", "detection", "not-detected").data
    assert error["code"] == "wake_word_error" and "hey_jarvis" in error["text"], error
    client.send(Describe())
    assert client.read_until("info").data["wake"]
    client.close()


HA_WAKE = """
import asyncio, sys
from homeassistant.components.wyoming.data import WyomingService, load_wyoming_info
from homeassistant.components.wyoming.wake_word import WyomingWakeWordProvider

port = int(sys.argv[1])
service = WyomingService("127.0.0.1", port, asyncio.run(load_wyoming_info("127.0.0.1", port)))
print("platforms", sorted(p.value for p in service.platforms))
provider = object.__new__(WyomingWakeWordProvider)   # its client code only: no running Home Assistant
provider.service, provider._supported_wake_words = service, []

async def chunks(path):   # what an Assist pipeline feeds it: 64 ms chunks in real time
    data = open(path, "rb").read()
    for i in range(0, len(data), 2048):
        yield data[i:i + 2048], i // 32
        await asyncio.sleep(0.064)

for path in sys.argv[2:]:
    result = asyncio.run(provider._async_process_audio_stream(chunks(path), "okay_nabu"))
    print("result", result and (result.wake_word_id, result.timestamp))
"""


@pytest.mark.homeassistant
@pytest.mark.skipif(not HASS.exists(), reason=f"no Home Assistant at {HASS}: run `make homeassistant-test`")
def test_home_assistants_own_wake_word_client_detects_okay_nabu(agent, tmp_path):
    """Home Assistant 2025.4's wyoming integration: one entry on this port gives both platforms, and
    its wake word provider's stream code gets the detection (and nothing without the phrase)."""
    wake, other = tmp_path / "wake.raw", tmp_path / "other.raw"
    wake.write_bytes(np.concatenate([silence(1.0), utterance("okay nabu", "en-us"), silence(1.0)])
                     .astype("<i2").tobytes())
    other.write_bytes(np.concatenate([silence(0.3), utterance("turn on the light", "en-us"), silence(0.3)])
                      .astype("<i2").tobytes())
    run = subprocess.run([str(HASS.parent / "python"), "-c", HA_WAKE, str(agent.port), str(wake), str(other)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0] == "platforms ['stt', 'wake_word']", lines
    assert lines[1].startswith("result ('okay_nabu', "), lines
    assert lines[2] == "result None", lines
