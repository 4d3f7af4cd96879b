"""The wake word end to end: `voice-agent run --listen-stdin` with listen.mode wake, a real
Mosquitto, the real microWakeWord engine (PyPI pymicro-wakeword) and espeak-ng speech.

Audio is written into the agent's stdin piece by piece; after each piece the test waits for the
listener's `stream_s` to reach it (a positive marker that every sample was analysed) before it
looks at what was, and was not, published or spooled.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

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
    agent = make_agent(WAKE, args=["--listen-stdin"]).start(probe, stdin=subprocess.PIPE)
    root = agent.root

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
    for bad in ({"mode": "always"}, {"noise_suppression": 5}, {"auto_gain": 32}, {"command_max_s": 0},
                {"wake_word": {"models": ["okay_nabu"]}}, {"wake_word": {"model_dir": "/tmp"}}):
        answer = probe.request(root, "config/set", {"config": {"listen": bad}})
        assert answer["status"] == "error", (bad, answer)
    agent.proc.stdin.close()
