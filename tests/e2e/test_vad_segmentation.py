"""VAD and segmenter on real espeak-ng speech and synthetic noise: one segment per utterance,
accurate boundaries, noise, max length, chunk-size independence, CPU cost.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent.audio.segmenter import TAIL_MS, Event, Segmenter, SpeechEnd, SpeechStart
from agent.settings import VADSettings
from tests.support.speech import (
    LONG_SENTENCES,
    SAMPLE_RATE,
    build_speech,
    pink_noise,
    silence,
    white_noise,
)


TOLERANCE_S = 0.15


def run(samples: np.ndarray, settings: VADSettings | None = None, chunk: int | None = None) -> list[Event]:
    seg = Segmenter(settings or VADSettings(), segment_prefix="test")
    events: list[Event] = []
    step = chunk or len(samples)
    for i in range(0, len(samples), step):
        events += seg.feed(samples[i:i + step])
    return events + seg.flush()


def ends(events: list[Event]) -> list[SpeechEnd]:
    return [e for e in events if isinstance(e, SpeechEnd)]


def assert_paired(events: list[Event]) -> None:
    """Events alternate start/end with matching ids, and no id repeats."""
    assert len(events) % 2 == 0, events
    for start, end in zip(events[::2], events[1::2]):
        assert isinstance(start, SpeechStart) and isinstance(end, SpeechEnd), (start, end)
        assert start.segment_id == end.segment_id and start.start_s == end.start_s
    ids = [e.segment_id for e in events[::2]]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("noise_dbfs, frame_ms", [(-60.0, 30), (-60.0, 20), (-60.0, 10), (None, 30)])
def test_one_segment_per_utterance_with_accurate_boundaries(noise_dbfs: float | None, frame_ms: int) -> None:
    speech = build_speech(noise_dbfs=noise_dbfs)
    settings = VADSettings(frame_ms=frame_ms)
    events = run(speech.samples, settings)
    assert_paired(events)
    segments = ends(events)
    assert len(segments) == len(speech.truth) == 3
    pre_roll_s = settings.pre_roll_ms / 1000
    for seg, (true_start, true_end) in zip(segments, speech.truth):
        # start_s includes the pre-roll; the speech onset is pre_roll later.
        assert abs(seg.start_s + pre_roll_s - true_start) <= TOLERANCE_S, (seg, true_start)
        assert abs(seg.end_s - true_end) <= TOLERANCE_S, (seg, true_end)
        assert seg.reason == "silence"
        assert seg.duration_s == pytest.approx(seg.end_s - seg.start_s)
        assert -30 < seg.rms_dbfs < -10
        # The audio is exactly the stream from start_s, ending a short tail after end_s.
        first = round(seg.start_s * SAMPLE_RATE)
        assert seg.samples.dtype == np.int16
        assert np.array_equal(seg.samples, speech.samples[first:first + len(seg.samples)])
        tail_s = len(seg.samples) / SAMPLE_RATE - seg.duration_s
        assert 0 <= tail_s <= TAIL_MS / 1000 + 1e-9


def test_speech_in_moderate_noise_keeps_every_word() -> None:
    """At 20 dB SNR decaying word ends fall under the gate; onset tracing and the tail keep them."""
    speech = build_speech(noise_dbfs=-40.0)
    segments = ends(run(speech.samples))
    assert len(segments) == 3
    for seg, (true_start, true_end) in zip(segments, speech.truth):
        assert seg.start_s + VADSettings().pre_roll_ms / 1000 <= true_start + TOLERANCE_S
        assert seg.start_s + len(seg.samples) / SAMPLE_RATE >= true_end - TOLERANCE_S


def test_segments_never_exceed_max_length_even_with_a_long_pre_roll() -> None:
    speech = build_speech(LONG_SENTENCES, gap_s=0.0)
    settings = VADSettings(max_segment_s=1.0, pre_roll_ms=2000)
    segments = ends(run(speech.samples, settings))
    assert len(segments) >= 10
    assert max(len(s.samples) for s in segments) <= SAMPLE_RATE * settings.max_segment_s


@pytest.mark.parametrize("name, audio", [
    ("white noise -30 dBFS", white_noise(10.0, -30.0)),
    ("pink noise -30 dBFS", pink_noise(10.0, -30.0)),
    ("pink noise -45 dBFS", pink_noise(10.0, -45.0)),
    ("white noise -60 dBFS", white_noise(5.0, -60.0)),
    ("digital silence", silence(5.0)),
])
def test_no_segment_without_speech(name: str, audio: np.ndarray) -> None:
    assert run(audio) == [], name


def test_a_sudden_loud_noise_is_learned_within_seconds() -> None:
    """A fan switched on: webrtcvad and the gate both pass it at first; the floor must catch up."""
    quiet = white_noise(5.0, -60.0)
    audio = np.concatenate([quiet, pink_noise(30.0, -30.0), build_speech(noise_dbfs=None).samples])
    segments = ends(run(audio))
    false_alarms = [s for s in segments if s.start_s < 35.0]
    assert len(false_alarms) <= 1 and all(s.duration_s < 5.0 for s in false_alarms), false_alarms
    assert len(segments) - len(false_alarms) == 3  # speech after the noise is still found


def test_long_speech_is_cut_into_consecutive_segments() -> None:
    speech = build_speech(LONG_SENTENCES, gap_s=0.0)
    settings = VADSettings(max_segment_s=2.0)
    events = run(speech.samples, settings)
    assert_paired(events)
    segments = ends(events)
    true_start, true_end = speech.truth[0][0], speech.truth[-1][1]
    assert true_end - true_start > 3 * settings.max_segment_s
    assert len(segments) >= 4
    assert sum(s.reason == "max_length" for s in segments) >= 3
    for seg in segments:
        assert seg.duration_s <= settings.max_segment_s + 1e-9
    # Each segment's audio continues exactly where the previous one's stopped: nothing lost.
    for prev, nxt in zip(segments, segments[1:]):
        assert nxt.start_s == pytest.approx(prev.start_s + len(prev.samples) / SAMPLE_RATE)
        if prev.reason == "max_length" and prev.end_s == pytest.approx(nxt.start_s):
            assert len(prev.samples) / SAMPLE_RATE == pytest.approx(prev.duration_s)  # hard cut, no tail
    first = round(segments[0].start_s * SAMPLE_RATE)
    joined = np.concatenate([s.samples for s in segments])
    assert np.array_equal(joined, speech.samples[first:first + len(joined)])
    assert segments[0].start_s + settings.pre_roll_ms / 1000 <= true_start + TOLERANCE_S
    assert segments[-1].end_s >= true_end - TOLERANCE_S


def test_events_do_not_depend_on_chunk_size() -> None:
    speech = build_speech()
    settings = VADSettings(max_segment_s=2.0)  # cuts the second utterance too
    reference = run(speech.samples, settings, chunk=len(speech.samples))
    assert any(e.reason == "max_length" for e in ends(reference))
    for chunk in (1, 160, 480, 4096):
        events = run(speech.samples, settings, chunk=chunk)
        assert events == reference, chunk  # dataclass equality: ids, times, levels, reasons
        for a, b in zip(ends(events), ends(reference)):
            assert np.array_equal(a.samples, b.samples), chunk


def test_flush_ends_an_open_segment_and_ids_carry_the_prefix() -> None:
    speech = build_speech(noise_dbfs=None)
    cut = round((speech.truth[0][0] + 1.0) * SAMPLE_RATE)  # stop one second into the first utterance
    seg = Segmenter(VADSettings(), segment_prefix="kitchen")
    events = seg.feed(speech.samples[:cut])
    assert [type(e) for e in events] == [SpeechStart] and seg.in_speech
    (end,) = seg.flush()
    assert isinstance(end, SpeechEnd) and end.reason == "flush"
    assert end.segment_id == events[0].segment_id == "kitchen-1"
    assert end.end_s <= cut / SAMPLE_RATE
    assert seg.flush() == [] and not seg.in_speech


def test_cpu_cost_is_far_below_the_listening_budget() -> None:
    """Continuous listening may cost 2 % of a core on a Pi; demand 0.5 % here (x86 is faster)."""
    audio = np.concatenate([build_speech().samples] * 3)
    seg = Segmenter(VADSettings(), segment_prefix="bench")
    start = time.process_time()
    for i in range(0, len(audio), 480):
        seg.feed(audio[i:i + 480])
    cpu_per_audio_second = (time.process_time() - start) / (len(audio) / SAMPLE_RATE)
    assert cpu_per_audio_second < 0.005
