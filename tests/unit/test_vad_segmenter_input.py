"""The VAD's energy gate rejects noise, and the segmenter rejects other sample types."""

from __future__ import annotations

import numpy as np
import pytest
import webrtcvad

from agent.audio.segmenter import Segmenter
from agent.audio.vad import FrameClassifier
from agent.settings import VADSettings
from tests.support.speech import SAMPLE_RATE, pink_noise


def test_energy_gate_is_what_rejects_noise() -> None:
    """Bare webrtcvad calls most pink-noise frames speech; the gated classifier calls none."""
    noise = pink_noise(10.0, -30.0)
    bare = webrtcvad.Vad(2)
    frames = [noise[i:i + 480] for i in range(0, len(noise) - 479, 480)]
    bare_voiced = sum(bare.is_speech(f.tobytes(), SAMPLE_RATE) for f in frames) / len(frames)
    gated = FrameClassifier(2, 30, 9.0)
    assert bare_voiced > 0.5
    assert sum(gated.classify(f) for f in frames) == 0


def test_segmenter_rejects_other_sample_types() -> None:
    with pytest.raises(TypeError):
        Segmenter(VADSettings()).feed(np.zeros(480, dtype=np.float32))


def test_decisions_follow_heard_and_segments_keep_the_captured_audio() -> None:
    """`feed(captured, heard)`: noise suppression decides where speech is, the job keeps the microphone's audio."""
    from agent.audio.segmenter import SpeechEnd
    from tests.support.speech import silence, utterance

    speech = np.concatenate([silence(1.0), utterance("turn on the kitchen light"), silence(1.5)])
    marked = np.full(len(speech), 7, dtype=np.int16)   # what the segment must hold: not what was heard
    events = Segmenter(VADSettings()).feed(marked, speech)
    (end,) = [e for e in events if isinstance(e, SpeechEnd)]
    assert len(end.samples) > SAMPLE_RATE and set(np.unique(end.samples)) == {7}
    assert Segmenter(VADSettings()).feed(speech, np.zeros(len(speech), dtype=np.int16)) == []
    with pytest.raises(ValueError):
        Segmenter(VADSettings()).feed(speech, speech[:-1])
