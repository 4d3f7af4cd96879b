"""Live listening end to end: `voice-agent run` listens to a (fake) microphone, a pipe or a WAV file.

The agent runs as a subprocess against a real Mosquitto and is observed only through MQTT and
files. The microphone is real PortAudio/ALSA reading a raw speech file through ALSA's `file`
plugin (tests/support/alsa.py). That plugin is not paced to real time and repeats old buffer
data past the end of its file, so the file is padded with silence, the ring buffer holds all of
it, and listening is switched off over MQTT once the expected segments have ended.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from agent.audio.wav import write_wav
from tests.support.agent import voice_agent_cmd
from tests.support.alsa import fake_microphone_env
from tests.support.models import needs_whisper_cpp, whisper_cpp_binary, whisper_cpp_model
from tests.support.probe import Probe, retained
from tests.support.speech import (
    LONG_SENTENCES,
    UTTERANCES,
    SpeechAudio,
    build_speech,
    pink_noise,
    silence,
    white_noise,
    write_raw,
)
from tests.support.wait import all_delivered, wait_until
from tests.support.wavs import tone_wav

TOLERANCE_S = 0.15
PRE_ROLL_S = 0.3   # vad.pre_roll_ms default: speech_start's start_s includes it
MIC = {"listen": {"enabled": True, "ring_buffer_s": 60}}   # the ring holds the whole fake-mic file
WHISPER = {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(whisper_cpp_binary()),
                                                    "model": str(whisper_cpp_model()), "threads": 2}}


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech() -> SpeechAudio:
    return build_speech()


@pytest.fixture
def mic_env(tmp_path: Path, speech: SpeechAudio) -> dict[str, str]:
    """HOME with an .asoundrc whose default capture device plays the speech, then 5 s of silence."""
    raw = write_raw(tmp_path / "mic.raw", np.concatenate([speech.samples, silence(5.0)]))
    return fake_microphone_env(tmp_path / "home", raw)


def vad(probe: Probe, root: str, event: str | None = None) -> list[dict]:
    return [m.json for m in probe.on(f"{root}/event/vad") if event is None or m.json["event"] == event]


def wait_vad(probe: Probe, root: str, event: str, count: int, timeout: float = 30) -> list[dict]:
    return [m.json for m in probe.wait_for(f"{root}/event/vad", lambda m: m.json["event"] == event,
                                           count=count, timeout=timeout, what=event)]


def stop_listening(probe: Probe, root: str) -> None:
    """Switch the listener off (config/set); spooled segments are still processed."""
    answer = probe.request(root, "config/set", {"config": {"listen": {"enabled": False}}})
    assert answer["status"] == "ok" and "listen" in answer["data"]["restarted"], answer


def listen_stats(probe: Probe, root: str) -> dict:
    return probe.request(root, "stats")["data"]["listen"]


def wait_listen_state(probe: Probe, root: str, state: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = listen_stats(probe, root)
        if stats.get("state") == state:
            return stats
        assert time.monotonic() < deadline, f"listener never reached {state!r}: {stats}"
        time.sleep(0.2)


def _ts(stamp: str) -> datetime:
    """A message's `ts` (ISO 8601 UTC, milliseconds): when the agent published it."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def wait_stream_past(probe: Probe, root: str, stream_s: float, timeout: float = 20) -> None:
    """Wait until the listener has read `stream_s` seconds of its stream, then until everything the
    agent published up to then has arrived: the positive marker that the audio up to that moment
    has been handled (heard or, while paused, discarded), in place of a sleep."""
    wait_until(lambda: listen_stats(probe, root)["stream_s"] >= stream_s, timeout,
               f"{stream_s:.1f} s of the stream read", interval=0.1)
    all_delivered(probe, root)


def listening(probe: Probe, root: str) -> bool:
    return probe.request(root, "state")["data"]["listening"]


def check_pairs(starts: list[dict], ends: list[dict]) -> None:
    assert [s["segment_id"] for s in starts] == [e["segment_id"] for e in ends]
    assert len({s["segment_id"] for s in starts}) == len(starts)
    for s, e in zip(starts, ends):
        assert s["start_s"] == e["start_s"] and e["end_s"] - e["start_s"] == pytest.approx(e["duration_s"], abs=2e-3)


def check_truth(ends: list[dict], truth: list[tuple[float, float]], tolerance: float = TOLERANCE_S) -> None:
    assert len(ends) == len(truth), ends
    for end, (true_start, true_end) in zip(ends, truth):
        assert abs(end["start_s"] + PRE_ROLL_S - true_start) <= tolerance, (end, true_start)
        assert abs(end["end_s"] - true_end) <= tolerance, (end, true_end)


def spool_files(agent) -> list[Path]:
    spool = agent.workdir / "state" / "spool"
    return sorted(p for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


def words_found(text: str, sentence: str) -> float:
    got = text.lower()
    return sum(w.lower() in got for w in sentence.split()) / len(sentence.split())


def stdin_agent(make_agent, tmp_path: Path, samples: np.ndarray, config: dict | None = None, name: str = "agent"):
    raw = write_raw(tmp_path / f"{name}.raw", samples)
    agent = make_agent(config, name=name, args=["--listen-stdin"])
    return agent, raw


# --- the microphone ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_whisper_cpp
def test_microphone_speech_becomes_vad_events_and_transcripts(make_agent, probe, mic_env, speech):
    agent = make_agent({**MIC, "transcriber": WHISPER, "summarizer": {"min_words": 3}}, env=mic_env).start(probe)
    ends = wait_vad(probe, agent.root, "speech_end", len(UTTERANCES))
    stop_listening(probe, agent.root)   # the plugin would otherwise keep repeating its last buffer
    transcripts = [m.json for m in probe.wait_for(f"{agent.root}/event/transcript", count=len(UTTERANCES),
                                                  timeout=180, what="transcripts")]
    starts, ends = vad(probe, agent.root, "speech_start"), vad(probe, agent.root, "speech_end")
    check_pairs(starts, ends)
    check_truth(ends, speech.truth)
    assert all(s["source"] == "pyaudio:default" for s in starts)
    assert all(e["spooled"] and e["reason"] == "silence" and -40 < e["rms_dbfs"] < 0 for e in ends)
    by_segment = {t["source"]["segment_id"]: t for t in transcripts}
    assert list(by_segment) == [e["segment_id"] for e in ends]   # one transcript per segment, in order
    for end, text in zip(ends, UTTERANCES):
        t = by_segment[end["segment_id"]]
        assert t["source"]["kind"] == "mic" and t["source"]["name"] == f"{end['segment_id']}.wav"
        assert words_found(t["text"], text) >= 0.7, (t["text"], text)
    summaries = probe.wait_for(f"{agent.root}/event/summary", count=len(UTTERANCES), what="summaries")
    assert {s.json["source"]["segment_id"] for s in summaries} == set(by_segment)
    stats = probe.request(agent.root, "stats")["data"]
    assert {"hits", "misses", "entries"} <= set(stats["caches"]["vad"])
    wait_until(lambda: spool_files(agent) == [], 10, "processed segments gone from the spool (SD card)")
    assert len(vad(probe, agent.root)) == 2 * len(UTTERANCES)


def test_stdin_gives_the_same_events_as_the_microphone(make_agent, probe, mic_env, speech, tmp_path):
    mic = make_agent(MIC, name="mic", device_id="mic-dev", env=mic_env).start(probe)
    wait_vad(probe, mic.root, "speech_end", len(UTTERANCES))
    stop_listening(probe, mic.root)
    pipe, raw = stdin_agent(make_agent, tmp_path, speech.samples, name="pipe")
    with open(raw, "rb") as f:
        pipe.start(probe, stdin=f)
    wait_listen_state(probe, pipe.root, "ended")
    probe.wait_for(f"{pipe.root}/event/transcript", count=len(UTTERANCES), what="transcripts")
    mic_ends, pipe_ends = vad(probe, mic.root, "speech_end"), vad(probe, pipe.root, "speech_end")
    assert len(pipe_ends) == len(mic_ends) == len(UTTERANCES)
    check_pairs(vad(probe, pipe.root, "speech_start"), pipe_ends)
    for a, b in zip(mic_ends, pipe_ends):
        assert abs(a["start_s"] - b["start_s"]) <= 0.03 and abs(a["end_s"] - b["end_s"]) <= 0.03, (a, b)
    assert all(s["source"] == "stdin" for s in vad(probe, pipe.root, "speech_start"))
    check_truth(pipe_ends, speech.truth)


@pytest.mark.parametrize("name", ["silence", "white noise", "pink noise"])
def test_no_segment_without_speech(make_agent, probe, tmp_path, name):
    audio = {"silence": silence(6.0), "white noise": white_noise(6.0, -30.0),
             "pink noise": pink_noise(6.0, -30.0)}[name]
    agent, raw = stdin_agent(make_agent, tmp_path, audio, MIC)
    with open(raw, "rb") as f:
        agent.start(probe, stdin=f)
    stats = wait_listen_state(probe, agent.root, "ended")
    assert stats["stream_s"] == pytest.approx(6.0, abs=0.01) and stats["segments"] == 0
    assert vad(probe, agent.root) == [] and probe.on(f"{agent.root}/event/transcript") == []


def test_long_utterance_is_cut_into_consecutive_segments(make_agent, probe, tmp_path):
    long = build_speech(LONG_SENTENCES, gap_s=0.0)
    agent, raw = stdin_agent(make_agent, tmp_path, long.samples, {"vad": {"max_segment_s": 3.0}})
    with open(raw, "rb") as f:
        agent.start(probe, stdin=f)
    wait_listen_state(probe, agent.root, "ended")
    starts, ends = vad(probe, agent.root, "speech_start"), vad(probe, agent.root, "speech_end")
    check_pairs(starts, ends)
    assert long.truth[-1][1] - long.truth[0][0] > 3 * 3.0 and len(ends) >= 4
    assert sum(e["reason"] == "max_length" for e in ends) >= 3
    assert all(e["duration_s"] <= 3.0 + 1e-6 for e in ends)
    for prev, nxt in zip(ends, ends[1:]):
        if prev["reason"] == "max_length":   # cut: the next segment starts where this one stopped
            assert nxt["start_s"] == pytest.approx(prev["end_s"], abs=1e-3)
    assert ends[0]["start_s"] + PRE_ROLL_S <= long.truth[0][0] + TOLERANCE_S
    assert ends[-1]["end_s"] >= long.truth[-1][1] - TOLERANCE_S
    transcripts = probe.wait_for(f"{agent.root}/event/transcript", count=len(ends), what="transcripts")
    assert sorted(t.json["source"]["segment_id"] for t in transcripts) == sorted(e["segment_id"] for e in ends)
    assert all(t.json["audio_s"] <= 3.0 + 0.21 for t in transcripts)   # at most the 200 ms tail more


# --- WAV at real-time pace, pause and resume -------------------------------------------------


def test_listen_wav_is_paced_in_real_time(make_agent, probe, tmp_path):
    one = build_speech(UTTERANCES[:1], lead_s=1.0, trail_s=1.5)
    write_wav(tmp_path / "one.wav", one.samples)
    agent = make_agent(name="wav", args=["--listen-wav", str(tmp_path / "one.wav")]).start(probe)
    (start,) = probe.wait_for(f"{agent.root}/event/vad", lambda m: m.json["event"] == "speech_start", what="start")
    (end,) = probe.wait_for(f"{agent.root}/event/vad", lambda m: m.json["event"] == "speech_end", what="end")
    check_truth([end.json], one.truth)
    # speech_start comes once min_speech_ms of speech has been heard; speech_end after silence_ms of
    # silence. In real time that is the utterance's length (+0.6 -0.25 s) apart; read as fast as
    # possible it would be milliseconds. Measured between the agent's own `ts` stamps, not on
    # arrival here (a busy broker or probe only delays arrival). Reading at least as slowly as real
    # time is what pacing means; the upper bound is wide because a loaded machine may fall behind.
    true_start, true_end = one.truth[0]
    expected = (true_end + 0.6) - (true_start + 0.25)
    paced = (_ts(end.json["ts"]) - _ts(start.json["ts"])).total_seconds()
    assert expected - 0.35 <= paced <= expected + 3.0, (paced, expected)
    assert end.json["source"] == start.json["source"] == "file:one.wav"
    wait_listen_state(probe, agent.root, "ended")
    # --fast: the same events, read as fast as possible.
    fast = make_agent(name="fast", device_id="fast-dev",
                      args=["--listen-wav", str(tmp_path / "one.wav"), "--fast"]).start(probe)
    stats = wait_listen_state(probe, fast.root, "ended", timeout=5)
    assert stats["stream_s"] == pytest.approx(one.duration_s, abs=1e-3)
    (fast_end,) = vad(probe, fast.root, "speech_end")
    assert (fast_end["start_s"], fast_end["end_s"]) == (end.json["start_s"], end.json["end_s"])


def test_pause_stops_vad_events_and_resume_restarts_them(make_agent, probe, tmp_path):
    talk = build_speech(UTTERANCES, gap_s=3.0)
    write_wav(tmp_path / "talk.wav", talk.samples)
    agent = make_agent(name="wav", args=["--listen-wav", str(tmp_path / "talk.wav")]).start(probe)
    wait_vad(probe, agent.root, "speech_end", 1)
    assert listening(probe, agent.root) is True
    paused = probe.request(agent.root, "pause")["data"]
    assert paused == {"paused": True, "listening": False}
    seen = len(vad(probe, agent.root))
    assert listening(probe, agent.root) is False
    # The second utterance is spoken while paused: the stream read past its end (and past the
    # silence that would end a segment) while no event came. The third starts 3 s after it.
    wait_stream_past(probe, agent.root, talk.truth[1][1] + 1.0)
    assert len(vad(probe, agent.root)) == seen, vad(probe, agent.root)[seen:]
    probe.request(agent.root, "resume")
    ends = wait_vad(probe, agent.root, "speech_end", 2, timeout=15)
    assert listening(probe, agent.root) is True
    # Stream time goes on while paused (the file is read and discarded), so the segment heard
    # after resuming is the third utterance at its true place; the second one was never heard.
    check_truth([ends[0]], talk.truth[:1])
    check_truth([ends[1]], talk.truth[2:3])
    check_pairs(vad(probe, agent.root, "speech_start")[:2], ends[:2])


def test_pause_closes_the_microphone_and_resume_reopens_it(make_agent, probe, mic_env):
    agent = make_agent(MIC, env=mic_env).start(probe)
    first = wait_vad(probe, agent.root, "speech_end", len(UTTERANCES))
    assert probe.request(agent.root, "pause")["data"]["listening"] is False
    stats = wait_listen_state(probe, agent.root, "paused")   # the stream is closed
    assert not listening(probe, agent.root)
    assert stats["source"] == "pyaudio:default" and stats["segments"] == len(UTTERANCES)
    assert stats["overruns"] >= 0 and stats["capture"]["input_overflows"] >= 0 and stats["capture_errors"] == 0
    seen = len(vad(probe, agent.root))
    all_delivered(probe, agent.root)   # the stream is closed: anything it had heard has arrived by now
    assert len(vad(probe, agent.root)) == seen
    probe.request(agent.root, "resume")
    # Reopened, ALSA's file plugin plays its file from the start again: the same speech, heard anew.
    again = wait_vad(probe, agent.root, "speech_end", 2 * len(UTTERANCES))[len(UTTERANCES):]
    stop_listening(probe, agent.root)
    assert len({e["segment_id"] for e in first + again}) == 2 * len(UTTERANCES)
    for a, b in zip(first, again):
        assert abs(a["duration_s"] - b["duration_s"]) <= 0.03, (a, b)
    check_pairs(vad(probe, agent.root, "speech_start")[:2 * len(UTTERANCES)], first + again)


def test_critical_memory_stops_listening_until_it_clears(make_agent, probe, tmp_path):
    talk = build_speech(UTTERANCES, gap_s=3.0)
    write_wav(tmp_path / "talk.wav", talk.samples)
    agent = make_agent({"memory": {"interval_s": 0.2, "min_available_mb": 1e6}},   # always critical (1 TB)
                       name="wav", args=["--listen-wav", str(tmp_path / "talk.wav")]).start(probe)
    probe.wait_for(f"{agent.root}/event/alert", lambda m: m.json["kind"] == "memory" and
                   m.json["level"] == "critical", what="memory critical")
    # The first utterance is spoken while memory is critical: the stream read past its end (and the
    # silence that would end a segment) while nothing was heard. The second starts 3 s after it.
    wait_stream_past(probe, agent.root, talk.truth[0][1] + 1.0)
    state = probe.request(agent.root, "state")["data"]
    assert state["memory_level"] == "critical" and state["listening"] is False and not state["paused"]
    assert vad(probe, agent.root) == []
    probe.request(agent.root, "config/set", {"config": {"memory": {"min_available_mb": 0}}})
    ends = wait_vad(probe, agent.root, "speech_end", 2, timeout=15)
    assert listening(probe, agent.root) is True
    check_truth(ends, talk.truth[1:])   # heard again from the second utterance on, at its true place


# --- durability and failures ------------------------------------------------------------------


def test_spooled_segment_survives_kill9_and_is_transcribed_after_restart(make_agent, probe, tmp_path):
    slow = tmp_path / "slow-whisper"   # a transcriber that never finishes: the job cannot complete
    slow.write_text("#!/bin/sh\nexec sleep 20\n")
    slow.chmod(0o755)
    one = build_speech(UTTERANCES[2:], lead_s=0.5, trail_s=1.0)
    agent, raw = stdin_agent(make_agent, tmp_path, one.samples, {
        "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(slow), "model": str(slow)}}})
    with open(raw, "rb") as f:
        agent.start(probe, stdin=f)
    (end,) = wait_vad(probe, agent.root, "speech_end", 1)
    segment = end["segment_id"]
    # in the spool or claimed (once claimed, its job id is kept beside it in a hidden .job file)
    assert [p.name for p in spool_files(agent) if p.suffix == ".wav"] == [f"{segment}.wav"]
    agent.kill9()
    agent.config["transcriber"] = {"engine": "bench_metadata"}
    agent.write_config(agent.config)
    agent.start(probe, stdin=subprocess.DEVNULL)   # empty standard input: nothing new is heard
    (t,) = probe.wait_for(f"{agent.root}/event/transcript", what="the spooled segment's transcript")
    assert t.json["source"] == {"kind": "mic", "name": f"{segment}.wav", "segment_id": segment}
    assert t.json["audio_s"] == pytest.approx(end["duration_s"], abs=0.21)
    wait_until(lambda: spool_files(agent) == [], 10, "the transcribed segment gone from the spool")
    # Events are delivered at least once: one killed after publishing, before the broker's
    # acknowledgement was recorded, sends it again on restart. Still one segment.
    assert {e["segment_id"] for e in vad(probe, agent.root, "speech_end")} == {segment}


def test_a_segment_that_fails_stays_in_the_spool_failed_folder_with_its_reason(make_agent, probe, tmp_path):
    broken = tmp_path / "broken-whisper"
    broken.write_text("#!/bin/sh\necho 'error: failed to initialize whisper context' >&2\nexit 3\n")
    broken.chmod(0o755)
    one = build_speech(UTTERANCES[:1], lead_s=0.5, trail_s=1.0)
    agent, raw = stdin_agent(make_agent, tmp_path, one.samples, {
        "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(broken), "model": str(broken)}},
        # a broken engine is not the segment's fault: with one try it goes to failed/ at once
        # instead of being kept queued for jobs.retry_tries (tests/e2e/test_memory_never_enforced.py)
        "jobs": {"retry_tries": 1}})
    with open(raw, "rb") as f:
        agent.start(probe, stdin=f)
    (end,) = wait_vad(probe, agent.root, "speech_end", 1)
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "failed", what="failed job")
    failed = agent.workdir / "state" / "spool" / "failed"
    deadline = time.monotonic() + 10
    while not (failed / f"{end['segment_id']}.wav.error.json").exists():
        assert time.monotonic() < deadline, spool_files(agent)
        time.sleep(0.1)
    assert [p.name for p in spool_files(agent)] == [f"{end['segment_id']}.wav", f"{end['segment_id']}.wav.error.json"]
    record = json.loads((failed / f"{end['segment_id']}.wav.error.json").read_text())
    assert record["code"] and record["message"] and record["source"]["segment_id"] == end["segment_id"]


def test_failing_capture_device_alerts_is_retried_and_recovers(make_agent, probe, broker, mic_env, tmp_path):
    agent = make_agent({"listen": {"enabled": True, "ring_buffer_s": 60, "device": "usbmic"}},
                       env=mic_env).start(probe)
    (alert,) = probe.wait_for(f"{agent.root}/event/alert", lambda m: m.json["kind"] == "capture", what="alert")
    assert alert.json["level"] == "error" and "usbmic" in alert.json["message"]
    kept = retained(broker.host, broker.port, f"{agent.root}/alert/capture")
    assert kept is not None and kept.json["kind"] == "capture"
    # The rest of the agent carries on.
    assert probe.request(agent.root, "ping")["status"] == "ok"
    (agent.inbox / "tone.wav").write_bytes(tone_wav(0.5))
    probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["kind"] == "inbox", what="inbox")
    assert listening(probe, agent.root) is False
    deadline = time.monotonic() + 10
    while (stats := listen_stats(probe, agent.root))["capture_errors"] < 2:   # retried with backoff
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    assert stats["state"] == "failed" and "usbmic" in stats["last_error"]
    assert len([m for m in probe.on(f"{agent.root}/event/alert") if m.json["kind"] == "capture"]) == 1
    # The USB microphone is plugged in: ALSA now knows the device, the next retry opens it.
    asoundrc = Path(mic_env["HOME"]) / ".asoundrc"
    asoundrc.write_text(asoundrc.read_text() + '\npcm.usbmic { type file slave.pcm "null" file "/dev/null" '
                        f'infile "{tmp_path / "mic.raw"}" format "raw" }}\n')
    probe.wait_for(f"{agent.root}/event/alert", lambda m: m.json["kind"] == "capture" and m.json["level"] == "ok",
                   timeout=40, what="alert cleared")
    wait_vad(probe, agent.root, "speech_end", len(UTTERANCES))
    stop_listening(probe, agent.root)
    assert retained(broker.host, broker.port, f"{agent.root}/alert/capture") is None


def test_devices_lists_the_default_input(mic_env):
    proc = subprocess.run([*voice_agent_cmd(), "devices"], env=mic_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(" default " in line and "[default input]" in line for line in lines), proc.stdout
    assert any("filemic" in line for line in lines), proc.stdout
