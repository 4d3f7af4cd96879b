"""agent.sources.listener in process: a microphone unplugged mid-speech, retried, back; pause closes it.

End-to-end behaviour is in test_listen.py (agent subprocess, MQTT, files). An unplugged USB
microphone cannot be simulated with ALSA's file plugin mid-stream, so here the listener gets a
source that fails the way PyAudioSource does (CaptureError from read, then from start).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import agent.sources.listener as listener_module
from agent.audio.capture import CaptureError, EndOfStream
from agent.audio.wav import decode_file
from agent.sources.listener import Listener
from agent.settings import ListenSettings, VADSettings
from tests.support.speech import build_speech


class FlakyMicrophone:
    """Delivers `samples`; fails once at `fail_at` samples, then refuses `bad_starts` starts."""

    name = "fake:usb"

    def __init__(self, samples: np.ndarray, fail_at: int, bad_starts: int) -> None:
        self.samples, self.fail_at, self.bad_starts = samples, fail_at, bad_starts
        self.pos, self.open, self.starts, self.stops = 0, False, 0, 0

    def start(self) -> None:
        self.starts += 1
        if self.pos >= self.fail_at and self.bad_starts > 0:
            self.bad_starts -= 1
            raise CaptureError("no input device matches 'usb'")
        self.open = True

    def read(self, n: int, timeout: float) -> np.ndarray | None:
        assert self.open
        if self.pos >= len(self.samples):
            raise EndOfStream
        if self.pos < self.fail_at <= self.pos + n:
            self.pos = self.fail_at
            raise CaptureError("input device 'usb' stopped delivering audio")
        out = self.samples[self.pos:self.pos + n]
        self.pos += len(out)
        time.sleep(0.001)
        return out

    def stop(self) -> None:
        self.open = False
        self.stops += 1

    def stats(self) -> dict:
        return {"source": self.name, "overruns": 0}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.changed = threading.Event()

    def emit(self, topic: str, body: dict) -> None:
        self.events.append((topic, body))

    def alert(self, kind: str, level: str, data: dict) -> None:
        self.events.append(("alert", {"kind": kind, "level": level, **data}))

    def clear(self, kind: str) -> None:
        self.events.append(("alert", {"kind": kind, "level": "ok"}))

    def vad(self, event: str) -> list[dict]:
        return [b for t, b in self.events if t == "vad" and b["event"] == event]


def make(tmp_path: Path, source, wanted=lambda: True) -> tuple[Listener, Recorder]:
    rec = Recorder()
    listener = Listener(ListenSettings(enabled=True), VADSettings(), tmp_path / "spool", source=None,
                        emit=rec.emit, wanted=wanted, on_change=rec.changed.set, raise_alert=rec.alert,
                        clear_alert=rec.clear)
    listener.source = source
    return listener, rec


def wait(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_unplugged_mid_speech_is_spooled_alerted_once_retried_and_recovered(tmp_path, monkeypatch):
    monkeypatch.setattr(listener_module, "RETRY_MIN_S", 0.05)
    speech = build_speech()
    middle = round(sum(speech.truth[1]) / 2 * 16000)   # unplugged in the middle of the second utterance
    mic = FlakyMicrophone(speech.samples, fail_at=middle, bad_starts=2)
    listener, rec = make(tmp_path, mic)
    listener.start()
    wait(lambda: listener.state == "ended")
    listener.stop()
    ends = rec.vad("speech_end")
    assert [e["reason"] for e in ends][:2] == ["silence", "flush"]   # the cut-off segment is kept
    assert ends[1]["end_s"] <= middle / 16000 + 1e-6
    assert len(ends) == len(rec.vad("speech_start")) >= 3
    assert abs(ends[-1]["end_s"] - speech.truth[2][1]) <= 0.15   # heard again after recovery
    alerts = [b for t, b in rec.events if t == "alert"]
    assert [a["level"] for a in alerts] == ["error", "ok"]   # once per outage, cleared on audio
    assert alerts[0]["kind"] == "capture" and "stopped delivering" in alerts[0]["message"]
    stats = listener.stats()
    assert stats["capture_errors"] == 3 and mic.starts == 4 and mic.stops == 4
    spooled = sorted((tmp_path / "spool").glob("*.wav"))
    assert [p.stem for p in spooled] == sorted(e["segment_id"] for e in ends)
    flushed = decode_file(tmp_path / "spool" / f"{ends[1]['segment_id']}.wav")
    assert flushed.duration_s == pytest.approx(ends[1]["duration_s"], abs=0.21)


def test_not_wanted_closes_the_microphone_and_poke_reopens_it(tmp_path):
    wanted = threading.Event()
    wanted.set()
    mic = FlakyMicrophone(np.zeros(16000 * 600, dtype=np.int16), fail_at=10 ** 12, bad_starts=0)
    listener, rec = make(tmp_path, mic, wanted=wanted.is_set)
    listener.start()
    wait(lambda: listener.active and mic.open)
    wanted.clear()
    listener.poke()
    wait(lambda: not mic.open and listener.state == "paused")
    assert not listener.active
    position = mic.pos
    time.sleep(0.2)
    assert mic.pos == position   # nothing is read while paused: the stream is closed
    wanted.set()
    listener.poke()
    wait(lambda: listener.active and mic.open and mic.pos > position)
    listener.stop()
    assert listener.state == "stopped" and not mic.open and mic.starts == 2
