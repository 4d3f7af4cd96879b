"""agent.sources.listener in process on espeak-ng speech: a microphone unplugged mid-speech, spooled,
alerted once, retried, back.

End-to-end behaviour is in tests/e2e/test_listen.py (agent subprocess, MQTT, files). An unplugged
USB microphone cannot be simulated with ALSA's file plugin mid-stream, so here the listener gets a
source that fails the way PyAudioSource does (CaptureError from read, then from start).
"""

from __future__ import annotations

import pytest

import agent.sources.listener as listener_module
from agent.audio.wav import decode_file
from tests.support.speech import build_speech
from tests.support.listener import FlakyMicrophone, make, wait


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
