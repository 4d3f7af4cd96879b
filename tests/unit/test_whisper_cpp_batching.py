"""whisper_cpp batching in process: audio_ctx sizes, segments mapped to their input, setting spellings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.audio.clip import Audio
from agent.settings import WhisperCppSettings


def marked_clip(seconds: float, freq: float) -> Audio:
    """A tone whose first and last samples are not zero, so the stand-in's stretch is the whole clip."""
    t = np.arange(int(seconds * 16000)) / 16000
    samples = (np.sin(2 * np.pi * freq * t + 0.5) * 8000).astype(np.int16)
    samples[samples == 0] = 1
    return Audio(samples)


def test_whisper_cpp_audio_ctx_sizes() -> None:
    from agent.engines.whisper_cpp import audio_ctx_for

    assert audio_ctx_for(0.5, None) == 512          # never under 10 s of context
    assert audio_ctx_for(9.57, None) == 640         # 11.57 s = 579 positions, rounded up to 64
    assert audio_ctx_for(40.0, None) == 1500        # capped at whisper's 30 s window
    assert audio_ctx_for(3.0, 0) == 0 and audio_ctx_for(3.0, 768) == 768


def test_whisper_cpp_segments_go_to_the_input_that_holds_their_sound() -> None:
    from agent.engines.whisper_concat import (Segment, Token, assign_segments, join_with_gaps, parse_segments,
                                              split_segment, voiced_frames)

    parts = [marked_clip(1.4, 300).samples, np.zeros(16000 * 2, dtype=np.int16), marked_clip(3.0, 400).samples]
    _, spans = join_with_gaps(parts)
    assert spans == [(0.0, 1.4), (2.4, 4.4), (5.4, 8.4)]
    voiced = [voiced_frames(p) for p in parts]
    # whisper's ends are loose: the first segment runs on through the gap and the 2 s silence
    loose = parse_segments(json.dumps({"transcription": [
        {"offsets": {"from": 0, "to": 5000}, "text": " first"},
        {"offsets": {"from": 5000, "to": 8400}, "text": " third"},
        {"offsets": {"from": 8400, "to": 9000}, "text": " [BLANK_AUDIO]"}]}).encode())
    assert assign_segments(loose, spans, voiced) == (["first", "", "third"], set())
    # one segment over two inputs' sound is cut after the punctuation token nearest the silence
    # between them (here at 5.5 s, just past the silence from 1.4 to 5.4 s: within tolerance)
    tokens = [Token(0.0, " Open"), Token(0.5, " the"), Token(0.9, " door"), Token(1.3, ","),
              Token(5.5, " play"), Token(6.0, ","), Token(6.3, " loud"), Token(8.0, ".")]
    merged = Segment(0.0, 8.4, "Open the door, play, loud.", tuple(tokens))
    assert assign_segments([merged], spans, voiced) == (["Open the door", "", "play, loud."], set())
    # ... and with no punctuation near that silence, both inputs are redone alone
    unsure = Segment(0.0, 8.4, "Open the door play loud", tuple(t for t in tokens if t.text not in (",", ".")))
    assert assign_segments([unsure], spans, voiced) == (["", "", ""], {0, 2})
    # whisper.cpp writes raw token bytes, so a token can hold half a UTF-8 character: whole again once joined
    raw = (b'{"transcription": [{"offsets": {"from": 0, "to": 900}, "text": " caf\xc3\xa9", "tokens": ['
           b'{"offsets": {"from": 0}, "text": " caf\xc3"}, {"offsets": {"from": 500}, "text": "\xa9"}]}]}')
    (cafe,) = parse_segments(raw)
    assert cafe.text == "café" and split_segment(cafe, [(0.0, 0.9)]) == ["café"]
    with pytest.raises(ValueError):
        parse_segments(b'{"result": {}}')


def test_whisper_cpp_batch_setting_spellings(tmp_path: Path) -> None:
    from agent.config import parse_settings
    from agent.config.problems import ConfigError
    from agent.config.yaml_lines import load_yaml_text

    def batch_of(value: str) -> object:
        data, lines = load_yaml_text(f"transcriber:\n  whisper_cpp:\n    {value}\n")
        return parse_settings(data, lines=lines, base_dir=tmp_path, environ={}).transcriber.whisper_cpp

    assert WhisperCppSettings().batch == "files" and WhisperCppSettings().audio_ctx == 0
    assert batch_of("batch: true").batch == "concat" and batch_of("batch: true") == WhisperCppSettings(batch="concat")
    assert batch_of("batch: false").batch == "off" and batch_of('batch: "off"') == batch_of("batch: false")
    assert batch_of("batch: files").batch == "files"
    for bad in ("batch: sometimes", "audio_ctx: 2000", "audio_ctx: auto"):
        with pytest.raises(ConfigError):
            batch_of(bad)
