"""The wake word end to end: `voice-agent run --listen-stdin` with listen.mode wake, a real
Mosquitto, the real microWakeWord engine (PyPI pymicro-wakeword) and espeak-ng speech.

Audio is written into the agent's stdin piece by piece; after each piece the test waits for the
listener's `stream_s` to reach it (a positive marker that every sample was analysed) before it
looks at what was, and was not, published or spooled.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest
import yaml

from agent.settings import TEST_ENGINES_ENV
from tests.support.broker import free_port
from tests.support.cli import cli

from tests.support.homeassistant import render
from tests.support.probe import Probe
from tests.support.speech import mix_noise, silence, utterance

pytest.importorskip("pymicro_wakeword", reason="the wake word extra is not installed (pip install '.[wake]')")

WAKE = {"listen": {"enabled": True, "mode": "wake", "command_max_s": 6,
                   "wake_word": {"engine": "micro", "models": ["okay_nabu", "alexa"]}}}
SAMPLE_RATE = 16000


def listen_stats(probe: Probe, root: str) -> dict:
    return probe.request(root, "stats")["data"]["listen"]


def wait_stream(probe: Probe, root: str, seconds: float, timeout: float = 20) -> dict:
    """Until the listener has analysed `seconds` of the stream."""
    deadline = time.monotonic() + timeout
    while True:
        stats = listen_stats(probe, root)
        if stats.get("stream_s", 0) >= seconds - 0.031:   # the last partial 30 ms block may wait for EOF
            return stats
        assert time.monotonic() < deadline, f"the listener never reached {seconds} s: {stats}"
        time.sleep(0.1)


def spool_files(agent) -> list:
    spool = agent.workdir / "state" / "spool"
    return sorted(p.name for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


def published(probe: Probe, root: str) -> dict[str, list]:
    return {name: [m.json for m in probe.on(f"{root}/event/{name}")] for name in ("vad", "wake", "transcript", "job")}


def feed(proc: subprocess.Popen, samples: np.ndarray) -> None:
    proc.stdin.write(samples.astype("<i2").tobytes())
    proc.stdin.flush()


def test_nothing_before_the_wake_word_then_one_job_carrying_it(make_agent, probe):
    before = np.concatenate([silence(1.0), utterance("the meeting moved to thursday afternoon"), silence(1.0)])
    wake = np.concatenate([utterance("okay nabu", "en-us"), silence(0.3)])
    after = np.concatenate([utterance("turn on the kitchen light"), silence(2.0),
                            utterance("and this sentence needs a new wake word"), silence(2.0)])
    before, wake, after = (mix_noise(x, -60.0) for x in (before, wake, after))
    agent = make_agent({**WAKE, "homeassistant": {"enabled": True}},
                       args=["--listen-stdin"]).start(probe, stdin=subprocess.PIPE)
    root = agent.root
    (discovery,) = probe.wait_for("homeassistant/device/test-dev/config", what="discovery document")
    entity = discovery.json["cmps"]["wake"]
    assert entity["state_topic"] == f"{root}/event/wake" and entity["event_types"] == ["okay_nabu", "alexa"]

    feed(agent.proc, before)
    wait_stream(probe, root, len(before) / SAMPLE_RATE)
    assert published(probe, root) == {"vad": [], "wake": [], "transcript": [], "job": []}
    assert spool_files(agent) == []

    feed(agent.proc, np.concatenate([wake, after]))
    agent.proc.stdin.close()
    (woke,) = [m.json for m in probe.wait_for(f"{root}/event/wake", what="event/wake")]
    assert woke["model"] == "okay_nabu" and 0.5 < woke["probability"] <= 1 and woke["source"] == "stdin"
    phrase_end = (len(before) + len(wake) - int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    assert phrase_end < woke["at_s"] < phrase_end + 0.5, (woke, phrase_end)
    assert "ts" in woke
    assert json.loads(render(entity["value_template"], woke)) == {"event_type": "okay_nabu",
                                                                  "probability": woke["probability"]}

    (done,) = probe.wait_for(f"{root}/event/job", lambda m: m.json["state"] == "done", what="the job")
    (transcript,) = probe.wait_for(f"{root}/event/transcript", what="the command's transcript")
    source = transcript.json["source"]
    assert source["kind"] == "mic" and source["wake"] == {"model": "okay_nabu", "probability": woke["probability"]}
    assert done.json["source"] == source
    wait_stream(probe, root, (len(before) + len(wake) + len(after)) / SAMPLE_RATE)
    events = published(probe, root)
    starts = [e for e in events["vad"] if e["event"] == "speech_start"]
    ends = [e for e in events["vad"] if e["event"] == "speech_end"]
    assert len(starts) == len(ends) == 1 and starts[0]["start_s"] >= woke["at_s"], events["vad"]
    assert ends[0]["segment_id"] == source["segment_id"] and ends[0]["end_s"] < woke["at_s"] + 6
    assert len(events["wake"]) == 1 and len(events["transcript"]) == 1   # the second sentence: nothing
    assert listen_stats(probe, root)["wake"] == {"mode": "wake", "engine": "micro", "models": ["okay_nabu", "alexa"],
                                                 "detections": 1, "waiting": True}
    time.sleep(0.5)
    assert spool_files(agent) == []


def test_a_stream_without_the_wake_phrase_publishes_nothing(make_agent, probe):
    speech = [utterance(t, v) for t, v in (("okay then, call nana", "en-us"), ("alex said yes", "en-gb"),
                                            ("hey jarvis turn it off", "en-us"), ("a perfectly normal day", "en"))]
    stream = mix_noise(np.concatenate([np.concatenate([s, silence(0.8)]) for s in speech]), -50.0)
    agent = make_agent(WAKE, args=["--listen-stdin"]).start(probe, stdin=subprocess.PIPE)
    feed(agent.proc, stream)
    wait_stream(probe, agent.root, len(stream) / SAMPLE_RATE)
    agent.proc.stdin.close()
    assert published(probe, agent.root) == {"vad": [], "wake": [], "transcript": [], "job": []}
    assert spool_files(agent) == [] and listen_stats(probe, agent.root)["wake"]["detections"] == 0


def test_mode_switches_over_mqtt_and_refuses_what_is_not_a_choice(make_agent, probe):
    agent = make_agent({"listen": {"enabled": True, "wake_word": {"models": ["alexa"]}}},
                       args=["--listen-stdin"]).start(probe, stdin=subprocess.PIPE)
    root = agent.root
    assert listen_stats(probe, root)["wake"]["mode"] == "continuous"
    answer = probe.request(root, "config/set", {"config": {"listen": {"mode": "wake"}}})
    assert answer["status"] == "ok" and "listen" in answer["data"]["restarted"], answer
    deadline = time.monotonic() + 10
    while listen_stats(probe, root)["wake"].get("models") != ["alexa"]:
        assert time.monotonic() < deadline, listen_stats(probe, root)
        time.sleep(0.1)
    for bad in ({"mode": "always"}, {"noise_suppression": 5}, {"noise_suppression": -1}, {"auto_gain": 32},
                {"command_max_s": 0}, {"command_max_s": 61}, {"wake_word": {"refractory_s": 61}},
                {"wake_word": {"models": ["okay_nabu"]}}, {"wake_word": {"model_dir": "/tmp"}},
                {"wake_word": {"engine": "openwakeword"}}):
        answer = probe.request(root, "config/set", {"config": {"listen": bad}})
        assert answer["status"] == "error", (bad, answer)
    for ends in ({"noise_suppression": 4, "auto_gain": 31, "command_max_s": 60, "wake_word": {"refractory_s": 60}},
                 {"noise_suppression": 0, "auto_gain": 0, "command_max_s": 1, "wake_word": {"refractory_s": 0}}):
        answer = probe.request(root, "config/set", {"config": {"listen": ends}})
        assert answer["status"] == "ok", (ends, answer)
    feed(agent.proc, np.concatenate([silence(0.5), utterance("alexa", "en-us"), silence(1.0)]))
    (woke,) = [m.json for m in probe.wait_for(f"{root}/event/wake", what="a wake at the bounds' far ends")]
    assert woke["model"] == "alexa"
    agent.proc.stdin.close()


# --- check-config and doctor ---------------------------------------------------------------------


def write_config(tmp_path, listen: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"device_id": "wake-dev", "state_dir": str(tmp_path / "state"),
                                    "mqtt": {"host": "127.0.0.1", "port": free_port()},
                                    "transcriber": {"engine": "bench_metadata"}, "listen": listen}))
    return str(path)


def doctor_lines(path: str) -> list[str]:
    out = cli("doctor", "--config", path, "--timeout", "0.5", env={**os.environ, TEST_ENGINES_ENV: "1"})
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    return out.stdout.splitlines()


def test_check_config_warns_about_openwakeword_licence_and_refuses_bad_models(tmp_path):
    env = {**os.environ, TEST_ENGINES_ENV: "1"}
    oww = write_config(tmp_path, {"mode": "wake", "wake_word": {"engine": "openwakeword", "models": ["hey_rhasspy"]}})
    out = cli("check-config", oww, env=env)
    assert out.returncode == 0 and "warning: " in out.stderr and "CC BY-NC-SA 4.0" in out.stderr, out.stderr
    micro = write_config(tmp_path, {"mode": "wake", "wake_word": {"models": ["okay_nabu"]}})
    out = cli("check-config", micro, env=env)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    for listen, key in (({"mode": "wake"}, "listen.mode"),
                        ({"wake_word": {"models": ["../okay_nabu"]}}, "listen.wake_word.models[0]"),
                        ({"wake_word": {"models": ["alexa:1.5"]}}, "listen.wake_word.models[0]"),
                        ({"wake_word": {"models": ["alexa", "alexa:0.8"]}}, "listen.wake_word.models[1]"),
                        ({"noise_suppression": 5}, "listen.noise_suppression")):
        out = cli("check-config", write_config(tmp_path, listen), env=env)
        assert out.returncode == 78 and key in out.stderr and "Traceback" not in out.stderr, (listen, out.stderr)


def test_doctor_loads_the_configured_models_and_names_a_bad_custom_one(tmp_path):
    lines = doctor_lines(write_config(tmp_path, {"mode": "wake", "noise_suppression": 2,
                                                 "wake_word": {"models": ["okay_nabu", "alexa:0.8:3"]}}))
    assert "OK       wake_word: micro: models okay_nabu, alexa load" in lines, lines
    assert any(line.startswith("OK       noise: webrtc_noise_gain installed") for line in lines), lines
    custom = tmp_path / "models"
    custom.mkdir()
    (tmp_path / "secret.tflite").write_bytes(b"not a model")
    (custom / "mine.json").write_text(json.dumps({"model": "../secret.tflite", "micro": {
        "probability_cutoff": 0.5, "sliding_window_size": 3}}))
    lines = doctor_lines(write_config(tmp_path, {"wake_word": {"models": ["mine"], "model_dir": str(custom)}}))
    (problem,) = [line for line in lines if line.startswith("PROBLEM  wake_word")]
    assert "'mine'" in problem and "same folder" in problem and "(exit 78)" in problem, problem
    lines = doctor_lines(write_config(tmp_path, {"wake_word": {"engine": "openwakeword", "models": ["alexa"]}}))
    assert any("warning: listen.wake_word.engine openwakeword" in line for line in lines), lines


def test_with_noise_suppression_the_vad_hears_clean_audio_and_the_job_gets_the_captured(make_agent, probe):
    """Suppression decides where speech is; the transcriber gets the microphone's own audio (the
    stand-in transcriber answers with the duration and level of what it was given)."""
    from tests.support.speech import pink_noise
    from tests.support.wake import rms_dbfs

    speech = np.concatenate([silence(1.5), utterance("turn on the kitchen light"), silence(2.0)])
    stream = np.clip(speech.astype(np.int32) + pink_noise(len(speech) / SAMPLE_RATE, -38.0, seed=9),
                     -32768, 32767).astype(np.int16)
    agent = make_agent({"listen": {"enabled": True, "noise_suppression": 2}},
                       args=["--listen-stdin"]).start(probe, stdin=subprocess.PIPE)
    feed(agent.proc, stream)
    agent.proc.stdin.close()
    (end,) = [m.json for m in probe.wait_for(f"{agent.root}/event/vad", lambda m: m.json["event"] == "speech_end",
                                              what="speech_end")]
    (transcript,) = probe.wait_for(f"{agent.root}/event/transcript", what="transcript")
    words = transcript.json["text"].split()   # "audio 1.23 s rms -20.1 dBFS"
    duration, level = float(words[1]), float(words[4])
    first = round(end["start_s"] * SAMPLE_RATE)
    captured = stream[first:first + round(duration * SAMPLE_RATE)]
    assert abs(level - rms_dbfs(captured)) <= 0.15, (transcript.json["text"], rms_dbfs(captured))
    assert transcript.json["source"].get("wake") is None
