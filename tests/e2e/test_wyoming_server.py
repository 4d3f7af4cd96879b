"""The Wyoming server against a client that speaks the protocol (the `wyoming` package, what Home
Assistant uses) and one that does not: no Home Assistant here (tests/e2e/test_wyoming_homeassistant.py
has the real one).

One agent, `voice-agent run` as a subprocess with Wyoming on loopback, a microphone on stdin (so the
satellite role exists) and the real whisper_cpp engine over the stand-in program that takes 2 s per
job (tests/support/whisper_cpp_standin.py), so a job is still running while the test pings. Observed
through the Wyoming sockets, MQTT and the agent's log only.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np

import pytest

pytest.importorskip("wyoming")

from wyoming.info import Describe  # noqa: E402
from wyoming.ping import Ping  # noqa: E402

from agent.audio.wav import write_wav  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
from tests.support.probe import Probe  # noqa: E402
from tests.support.speech import build_speech  # noqa: E402
from tests.support.whisper_cpp_standin import pcm_digest, whisper_cpp_standin  # noqa: E402
from tests.support.wyoming_client import WyomingClient, header, pcm_of, send_audio  # noqa: E402

DELAY_S = 2.0


def speech_wav(tmp_path) -> bytes:
    path = tmp_path / "speech.wav"
    write_wav(path, build_speech(("turn on the kitchen light",), lead_s=0.2, trail_s=0.2).samples)
    return path.read_bytes()


@pytest.fixture
def agent(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    probe = Probe(broker.host, broker.port)
    exe, model = whisper_cpp_standin(tmp_path / "standin")
    stt_port, sat_port = free_port(), free_port()
    agent = AgentProcess(tmp_path / "agent", broker.port, {
        "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(exe), "model": str(model)}},
        "summarizer": {"engine": "none"},
        "wyoming": {"enabled": True, "stt_port": stt_port, "port": sat_port, "allow": ["127.0.0.1"]},
    }, env={"WHISPER_STANDIN_DELAY_S": str(DELAY_S)}, args=["--listen-stdin"])
    agent.start(probe, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while "wyoming: serving" not in agent.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "wyoming: serving" in agent.log(), agent.log()[-2000:]
    agent.ports = {"stt": stt_port, "satellite": sat_port}
    yield agent, probe
    agent.stop()
    probe.close()
    broker.stop()


def test_transcribes_through_the_job_slot_and_answers_pings_meanwhile(agent, tmp_path):
    agent, probe = agent
    wav = speech_wav(tmp_path)
    pcm, rate, width, channels = pcm_of(wav)
    client = WyomingClient(agent.ports["stt"])
    client.send(Describe())
    info = client.read_until("info").data
    assert info["asr"][0]["name"] == "voice-agent test-dev" and info["asr"][0]["models"][0]["languages"] == ["en"]

    send_audio(client, pcm, rate, width, channels)
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running", what="the Wyoming job running")
    latencies = []
    transcript = None
    client.sock.settimeout(10)
    while transcript is None:
        t0 = time.monotonic()
        client.send(Ping(text="x"))
        while True:
            event = client.read()
            assert event is not None, "connection closed"
            if event.type == "pong":
                latencies.append(time.monotonic() - t0)
                break
            if event.type == "transcript":
                transcript = event.data["text"]
        time.sleep(0.1)
    assert transcript == pcm_digest(wav), transcript   # the engine got exactly the audio sent
    assert len(latencies) >= 5 and max(latencies) < 1.0, latencies   # answered while the 2 s job ran
    print(f"\n{len(latencies)} pings while the job ran: median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    job = probe.wait_for(f"{agent.root}/event/transcript", what="the transcript on MQTT")[-1].json
    assert job["text"] == transcript and job["source"]["kind"] == "wyoming", job
    client.close()


def test_a_taken_slot_is_answered_busy(agent, tmp_path):
    agent, probe = agent
    wav = speech_wav(tmp_path)
    import base64
    import json as _json
    probe.publish(f"{agent.root}/request/transcribe", _json.dumps(
        {"audio_b64": base64.b64encode(wav).decode(), "summarize": False, "transaction": "t1"}))
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running", what="the MQTT job running")
    client = WyomingClient(agent.ports["stt"])
    send_audio(client, pcm_of(wav)[0])
    error = client.read_until("error", "transcript", timeout=DELAY_S).data
    assert error.get("code") == "busy", error
    client.close()


def test_hostile_clients_are_closed_with_one_log_line_and_mqtt_is_unaffected(agent, tmp_path):
    agent, probe = agent
    port = agent.ports["stt"]
    # not in wyoming.allow (127.0.0.2 is loopback too, but only 127.0.0.1 is listed)
    outsider = WyomingClient(port, source="127.0.0.2")
    outsider.send_raw(header("describe"))
    assert outsider.closed_by_peer(), "a client outside the allow list was served"
    # a payload over the bound: closed before its bytes are read
    big = WyomingClient(port)
    big.send_raw(header("audio-chunk", payload_length=50 * 1024 * 1024))
    assert big.closed_by_peer()
    # a header that is not the protocol's
    bad = WyomingClient(port)
    bad.send_raw(b"this is not json\n")
    assert bad.closed_by_peer()
    # a header line with no end
    long = WyomingClient(port)
    long.send_raw(b"{" + b" " * 100_000)
    assert long.closed_by_peer()
    # an event without the fields its type needs (audio-start without a rate)
    fields = WyomingClient(port)
    fields.send_raw(header("audio-start", data={"width": 2, "channels": 1}))
    assert fields.closed_by_peer()
    log = agent.log()
    assert log.count("malformed audio-start event") == 1, log[-3000:]
    assert log.count("not in wyoming.allow") == 1, log[-3000:]
    assert log.count("payload_length 52428800 is over the bound") == 1, log[-3000:]
    assert log.count("malformed header: not JSON") == 1, log[-3000:]
    assert log.count("header line over the bound") == 1, log[-3000:]
    # MQTT kept answering, and the Wyoming service still works for a good client
    assert probe.request(agent.root, "ping", timeout=5)["status"] == "ok"
    good = WyomingClient(port)
    good.send(Describe())
    assert good.read_until("info").data["asr"]
    good.close()
    for c in (outsider, big, bad, long, fields):
        c.close()


def test_one_connection_per_role_and_disconnects_logged_once_a_minute(agent):
    agent, probe = agent
    first = WyomingClient(agent.ports["satellite"])
    first.send(Describe())
    assert first.read_until("info").data["satellite"]["name"] == "voice-agent test-dev"
    second = WyomingClient(agent.ports["satellite"])   # Home Assistant back after a restart
    second.send(Describe())
    assert second.read_until("info").data["satellite"]
    assert first.closed_by_peer(), "the old satellite connection was kept beside the new one"
    second.close()
    for _ in range(5):   # five more disconnects within the minute
        c = WyomingClient(agent.ports["stt"])
        c.send(Describe())
        c.read_until("info")
        c.close()
    deadline = time.monotonic() + 5
    while "disconnected" not in agent.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in agent.log().splitlines() if "wyoming" in line and
             ("disconnected" in line or "replaces" in line or "silent" in line)]
    # one line for the satellite role, one for the speech-to-text role: not one per disconnect
    assert len(lines) <= 2, lines


def test_wyoming_keys_cannot_be_changed_over_mqtt(agent):
    agent, probe = agent
    for change in ({"enabled": False}, {"bind": "0.0.0.0"}, {"allow": ["0.0.0.0/0"]}, {"port": 1234}):
        answer = probe.request(agent.root, "config/set", {"config": {"wyoming": change}}, timeout=5)
        assert answer["status"] == "error" and answer["error"]["code"] == "forbidden", (change, answer)


def test_advertised_over_zeroconf_under_a_name_from_the_device_id(tmp_path):
    zeroconf = pytest.importorskip("zeroconf")
    broker = Broker(tmp_path / "broker").start()
    probe = Probe(broker.host, broker.port)
    stt_port = free_port()
    agent = AgentProcess(tmp_path / "agent", broker.port, {
        "wyoming": {"enabled": True, "stt_port": stt_port, "bind": "0.0.0.0", "allow": ["127.0.0.1"]}})
    agent.start(probe)
    zc = zeroconf.Zeroconf()
    try:
        info = zc.get_service_info("_wyoming._tcp.local.", "voice-agent-test-dev-stt._wyoming._tcp.local.",
                                   timeout=10_000)
        assert info is not None, agent.log()[-2000:]
        assert info.port == stt_port and info.properties == {b"role": b"stt"}
    finally:
        zc.close()
        agent.stop()
        probe.close()
        broker.stop()


PLAYBACK_ASOUNDRC = """\
pcm.fileout {{
    type file
    slave.pcm "null"
    file "{out}"
    format "raw"
}}
pcm.!default {{
    type plug
    slave.pcm "fileout"
}}
"""


def test_satellite_streams_utterances_and_plays_the_spoken_answer(tmp_path):
    """The test plays Home Assistant's part of the satellite protocol; the answer is played through
    PyAudio into ALSA's `file` plugin (no sound card here), so the bytes that reach the device are read back."""
    pytest.importorskip("pyaudio")
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.satellite import RunSatellite
    from wyoming.tts import Synthesize

    home = tmp_path / "home"
    home.mkdir()
    played_file = tmp_path / "played.raw"
    (home / ".asoundrc").write_text(PLAYBACK_ASOUNDRC.format(out=played_file))
    broker = Broker(tmp_path / "broker").start()
    probe = Probe(broker.host, broker.port)
    sat_port = free_port()
    agent = AgentProcess(tmp_path / "agent", broker.port, {
        "wyoming": {"enabled": True, "stt_port": None, "port": sat_port, "output_device": "default"}},
        env={"HOME": str(home), "JACK_NO_START_SERVER": "1"}, args=["--listen-stdin"])
    agent.start(probe, stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while "wyoming: serving" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        ha = WyomingClient(sat_port)
        ha.send(Describe())
        ha.read_until("info")
        ha.send(RunSatellite())
        deadline = time.monotonic() + 10
        while "ready for pipelines" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        # an utterance on the microphone becomes a pipeline run, not a spooled job
        samples = build_speech(("turn on the kitchen light",), lead_s=0.5, trail_s=2.0).samples
        agent.proc.stdin.write(samples.astype("<i2").tobytes())
        agent.proc.stdin.flush()
        run = ha.read_until("run-pipeline").data
        assert run["start_stage"] == "asr" and run["end_stage"] == "tts", run   # an output device: TTS
        assert ha.read_until("audio-start").data["rate"] == 16000
        streamed = bytearray()
        while True:
            event = ha.read_until("audio-chunk", "audio-stop")
            if event.type == "audio-stop":
                break
            streamed += event.payload
        assert 1.0 < len(streamed) / 32000 < 4.0, len(streamed)
        vad = probe.wait_for(f"{agent.root}/event/vad", lambda m: m.json["event"] == "speech_end",
                             what="speech_end")[-1].json
        assert vad["assist"] is True and vad["spooled"] is False, vad
        assert not list((tmp_path / "agent" / "state" / "spool").glob("*.wav"))
        # Home Assistant's answer: its text, then its audio, which the device plays and acknowledges
        answer = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 8000).astype("<i2").tobytes()
        ha.send(Synthesize(text="Turned on the light"))
        ha.send(AudioStart(rate=22050, width=2, channels=1))
        for i in range(0, len(answer), 2048):
            ha.send(AudioChunk(rate=22050, width=2, channels=1, audio=answer[i:i + 2048]))
        ha.send(AudioStop())
        ha.read_until("played", timeout=15)
        events = {m.json["event"]: m.json for m in probe.on(f"{agent.root}/event/assist")}
        assert events["answer"]["text"] == "Turned on the light", events
        tts = probe.wait_for(f"{agent.root}/event/assist", lambda m: m.json["event"] == "tts", what="tts")[-1].json
        assert tts["played"] is True and tts["audio_s"] == 1.0, tts
        assert answer[:4096] in played_file.read_bytes(), "the answer did not reach the output device"
        ha.close()
    finally:
        agent.stop()
        probe.close()
        broker.stop()
