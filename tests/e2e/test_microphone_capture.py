"""Capture from a microphone: real PortAudio through ALSA's file plugin, and a real pipe beside it.

In-process sources (stdin, WAV pacing, the streaming resampler) are in
tests/unit/test_audio_sources.py.

PyAudio runs in a subprocess because ALSA reads ~/.asoundrc once per process: the child gets a
temporary HOME whose .asoundrc turns a raw speech file into the default microphone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.audio.resample import resample
from agent.audio.segmenter import Segmenter
from agent.settings import VADSettings
from tests.support.alsa import fake_microphone_env
from tests.support.paths import REPO
from tests.support.speech import SpeechAudio, build_speech, write_raw


needs_pyaudio = pytest.mark.skipif(importlib.util.find_spec("pyaudio") is None,
                                   reason="PyAudio is not installed (pip install '.[mic]')")

ROOT = REPO
TOLERANCE_S = 0.15
CHILD_TIMEOUT_S = 60

# Reads exactly `total` samples (the ALSA file plugin repeats old data past the end of its
# file), feeds the segmenter and prints one JSON line per event, then the source's stats.
CAPTURE_SCRIPT = r"""
import hashlib, json, sys
from agent.audio.capture import CaptureError, EndOfStream, PyAudioSource, StdinSource, list_devices
from agent.audio.segmenter import Segmenter
from agent.settings import VADSettings

args = json.loads(sys.argv[1])
if args["kind"] == "devices":
    print(json.dumps(list_devices()))
    sys.exit(0)
total = args["total"]
if args["kind"] == "pyaudio":
    source = PyAudioSource(args.get("device"), args.get("rate", 16000), 480, ring_seconds=total / 16000 + 2)
else:
    source = StdinSource()
if args.get("vanish"):
    source.start()
    source._stream.stop_stream()  # the device stops delivering, as when it is unplugged
    source.ring.clear()
    try:
        for _ in range(100):
            source.read(480, timeout=0.3)
    except CaptureError as exc:
        print(json.dumps({"type": "error", **exc.as_dict()}))
    source.stop()
    source.start()  # what the supervisor does after its backoff
    frames = [source.read(480, timeout=5.0) for _ in range(10)]
    print(json.dumps({"type": "restarted", "samples": [len(f) for f in frames if f is not None]}))
    source.stop()
    sys.exit(0)
segmenter = Segmenter(VADSettings(), segment_prefix="cap")
got, events, digest = 0, [], hashlib.sha256()
try:
    source.start()
    while got < total:
        frame = source.read(min(480, total - got), timeout=5.0)
        if frame is None:
            continue
        digest.update(frame.tobytes())
        got += len(frame)
        events += segmenter.feed(frame)
except EndOfStream:
    pass
except CaptureError as exc:
    print(json.dumps({"type": "error", **exc.as_dict()}))
    sys.exit(3)
events += segmenter.flush()
source.stop()
for e in events:
    print(json.dumps({"type": type(e).__name__, **{k: v for k, v in vars(e).items() if k != "samples"}}))
print(json.dumps({"type": "stats", "samples": got, "sha256": digest.hexdigest(), **source.stats()}))
"""


def run_child(args: dict, env: dict[str, str] | None = None, stdin: bytes | None = None) -> tuple[int, list[dict]]:
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT, json.dumps(args)], env=env, cwd=ROOT,
                          input=stdin if stdin is not None else b"", capture_output=True,
                          timeout=CHILD_TIMEOUT_S)
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith(("{", "["))]
    if proc.returncode not in (0, 3):
        pytest.fail(f"capture child failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc.returncode, lines


def in_process_events(samples: np.ndarray) -> list[dict]:
    seg = Segmenter(VADSettings(), segment_prefix="cap")
    events = seg.feed(samples) + seg.flush()
    return [{"type": type(e).__name__, **{k: v for k, v in vars(e).items() if k != "samples"}} for e in events]


@pytest.fixture(scope="module")
def speech() -> SpeechAudio:
    return build_speech()


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory, speech: SpeechAudio) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("alsa")
    raw = write_raw(folder / "speech-16k.raw", speech.samples)
    return fake_microphone_env(folder / "home", raw)


def check_against_truth(events: list[dict], speech: SpeechAudio) -> None:
    ends = [e for e in events if e["type"] == "SpeechEnd"]
    assert len(ends) == len(speech.truth), events
    pre_roll = VADSettings().pre_roll_ms / 1000
    for end, (true_start, true_end) in zip(ends, speech.truth):
        assert abs(end["start_s"] + pre_roll - true_start) <= TOLERANCE_S, (end, true_start)
        assert abs(end["end_s"] - true_end) <= TOLERANCE_S, (end, true_end)


@needs_pyaudio
def test_pyaudio_capture_through_alsa_segments_each_utterance(
        microphone: dict[str, str], speech: SpeechAudio) -> None:
    code, lines = run_child({"kind": "pyaudio", "total": len(speech.samples)}, microphone)
    assert code == 0, lines
    *events, stats = lines
    check_against_truth(events, speech)
    # Byte-exact capture: the same events as the segmenter run directly on the samples.
    assert events == in_process_events(speech.samples)
    assert stats["samples"] == len(speech.samples)
    assert stats["source"] == "pyaudio:default" and stats["input_overflows"] == 0


@needs_pyaudio
def test_stdin_pipe_gives_the_same_events_as_pyaudio(microphone: dict[str, str], speech: SpeechAudio) -> None:
    args = {"kind": "pyaudio", "total": len(speech.samples)}
    _, mic_lines = run_child(args, microphone)
    code, pipe_lines = run_child({"kind": "stdin", "total": 10 ** 9}, stdin=speech.raw_bytes())
    assert code == 0
    *events, stats = pipe_lines
    assert events == mic_lines[:-1]
    assert stats["samples"] == len(speech.samples)  # EOF ended the source
    assert stats["sha256"] == mic_lines[-1]["sha256"]


@needs_pyaudio
def test_device_by_name_at_48_khz_is_resampled(tmp_path: Path, speech: SpeechAudio) -> None:
    samples_48k = np.clip(np.round(resample(speech.samples.astype(np.float32), 16000, 48000)),
                          -32768, 32767).astype(np.int16)
    env = fake_microphone_env(tmp_path / "home", write_raw(tmp_path / "speech-48k.raw", samples_48k))
    code, lines = run_child({"kind": "pyaudio", "device": "FILEMIC", "rate": 48000,
                             "total": len(speech.samples)}, env)
    assert code == 0, lines
    *events, stats = lines
    assert stats["source"] == "pyaudio:FILEMIC" and stats["sample_rate"] == 48000
    check_against_truth(events, speech)


@needs_pyaudio
def test_list_devices_shows_the_default_input(microphone: dict[str, str]) -> None:
    _, (devices,) = run_child({"kind": "devices"}, microphone)
    names = [d["name"] for d in devices]
    assert "default" in names, devices
    for d in devices:
        assert set(d) >= {"index", "name", "max_input_channels", "default_sample_rate"}
        assert d["max_input_channels"] > 0
    assert any(d["default"] for d in devices)


@needs_pyaudio
def test_unknown_device_is_a_capture_error(microphone: dict[str, str]) -> None:
    code, lines = run_child({"kind": "pyaudio", "device": "no-such-microphone", "total": 16000}, microphone)
    assert code == 3
    assert lines[0]["code"] == "capture_error" and "filemic" in lines[0]["message"]


@needs_pyaudio
def test_a_device_that_stops_delivering_is_a_capture_error_and_restart_works(
        microphone: dict[str, str]) -> None:
    code, (error, restarted) = run_child({"kind": "pyaudio", "total": 0, "vanish": True}, microphone)
    assert code == 0
    assert error["type"] == "error" and error["code"] == "capture_error", error
    assert "stopped delivering" in error["message"]
    assert restarted["samples"] == [480] * 10
