"""VAD, segmenter, cache and ring buffer on real espeak-ng speech and synthetic noise (no I/O)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import webrtcvad

from agent.audio.ring import RingBuffer
from agent.audio.segmenter import TAIL_MS, Event, Segmenter, SpeechEnd, SpeechStart
from agent.audio.vad import FrameClassifier, VadCache
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


def test_energy_gate_is_what_rejects_noise() -> None:
    """Bare webrtcvad calls most pink-noise frames speech; the gated classifier calls none."""
    noise = pink_noise(10.0, -30.0)
    bare = webrtcvad.Vad(2)
    frames = [noise[i:i + 480] for i in range(0, len(noise) - 479, 480)]
    bare_voiced = sum(bare.is_speech(f.tobytes(), SAMPLE_RATE) for f in frames) / len(frames)
    gated = FrameClassifier(2, 30, 9.0)
    assert bare_voiced > 0.5
    assert sum(gated.classify(f) for f in frames) == 0


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


def test_segmenter_rejects_other_sample_types() -> None:
    with pytest.raises(TypeError):
        Segmenter(VADSettings()).feed(np.zeros(480, dtype=np.float32))


def test_cpu_cost_is_far_below_the_listening_budget() -> None:
    """Continuous listening may cost 2 % of a core on a Pi; demand 0.5 % here (x86 is faster)."""
    audio = np.concatenate([build_speech().samples] * 3)
    seg = Segmenter(VADSettings(), segment_prefix="bench")
    start = time.process_time()
    for i in range(0, len(audio), 480):
        seg.feed(audio[i:i + 480])
    cpu_per_audio_second = (time.process_time() - start) / (len(audio) / SAMPLE_RATE)
    assert cpu_per_audio_second < 0.005


# --- VadCache ---------------------------------------------------------------------------------


def test_cache_hit_on_the_same_buffer() -> None:
    audio = build_speech().samples
    cache = VadCache(8)
    classifier = FrameClassifier(cache=cache)
    first = classifier.classify_buffer(audio)
    assert (cache.hits, cache.misses) == (0, 1)
    assert classifier.classify_buffer(audio.copy()) == first
    assert (cache.hits, cache.misses) == (1, 1)
    assert any(first) and not all(first)
    # The cached answer is the one a fresh streaming classifier gives.
    fresh = FrameClassifier()
    assert first == [fresh.classify(audio[i:i + 480]) for i in range(0, len(audio) - 479, 480)]


def test_cache_key_covers_the_whole_buffer() -> None:
    a = build_speech().samples
    b = a.copy()
    b[500:-500] = white_noise(len(b) / SAMPLE_RATE, -30.0)[500:-500]
    assert np.array_equal(a[:500], b[:500]) and np.array_equal(a[-500:], b[-500:])
    params = FrameClassifier().params
    assert VadCache.key(a, params) != VadCache.key(b, params)
    cache = VadCache(8)
    classifier = FrameClassifier(cache=cache)
    assert classifier.classify_buffer(a) != classifier.classify_buffer(b)
    assert (cache.hits, cache.misses) == (0, 2)


def test_cache_key_covers_the_classifier_parameters() -> None:
    audio = build_speech().samples
    cache = VadCache(8)
    FrameClassifier(2, 30, 9.0, cache=cache).classify_buffer(audio)
    FrameClassifier(3, 30, 9.0, cache=cache).classify_buffer(audio)
    FrameClassifier(2, 20, 9.0, cache=cache).classify_buffer(audio)
    FrameClassifier(2, 30, 12.0, cache=cache).classify_buffer(audio)
    assert (cache.hits, cache.misses) == (0, 4)


def test_cache_is_a_bounded_lru() -> None:
    cache = VadCache(2)
    keys = [VadCache.key(np.full(480, i, dtype=np.int16), ()) for i in range(3)]
    cache.put(keys[0], (True,))
    cache.put(keys[1], (False,))
    assert cache.get(keys[0]) == (True,)  # now most recently used
    cache.put(keys[2], (True, True))
    assert len(cache) == 2
    assert cache.get(keys[1]) is None  # the least recently used went
    assert cache.get(keys[0]) == (True,) and cache.get(keys[2]) == (True, True)
    stats = cache.stats()
    assert {k: stats[k] for k in ("entries", "hits", "misses")} == {"entries": 2, "hits": 3, "misses": 1}
    assert 0 < stats["bytes"] < 1000
    disabled = VadCache(0)
    disabled.put(keys[0], (True,))
    assert len(disabled) == 0 and disabled.get(keys[0]) is None


def test_cache_is_thread_safe() -> None:
    cache = VadCache(16)
    keys = [VadCache.key(np.full(16, i, dtype=np.int16), ()) for i in range(64)]

    def worker() -> None:
        for _ in range(50):
            for k in keys:
                if cache.get(k) is None:
                    cache.put(k, (True,))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(cache) == 16
    assert cache.hits + cache.misses == 4 * 50 * 64


# --- RingBuffer -------------------------------------------------------------------------------


def test_ring_counts_overruns_instead_of_blocking() -> None:
    ring = RingBuffer(1000)
    assert ring.write(b"\x01" * 600)
    assert not ring.write(b"\x02" * 600)  # does not fit: dropped whole
    assert ring.write(b"\x03" * 400)
    assert (ring.overruns, ring.overrun_bytes) == (1, 600)
    data = ring.read(1000, timeout=0)
    assert data is not None and bytes(data) == b"\x01" * 600 + b"\x03" * 400


def test_ring_read_times_out_with_none() -> None:
    ring = RingBuffer(1000)
    ring.write(b"\x00" * 10)
    start = time.monotonic()
    assert ring.read(100, timeout=0.2) is None
    assert 0.15 <= time.monotonic() - start < 2.0
    assert ring.available == 10  # a timed-out read takes nothing


def test_ring_wakes_the_reader_on_write_and_on_close() -> None:
    ring = RingBuffer(1000)
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append((ring.read(4, timeout=10), time.monotonic())))
    reader.start()
    time.sleep(0.05)
    written = time.monotonic()
    ring.write(b"abcd")
    reader.join(timeout=5)
    data, woke = results.pop()
    assert bytes(data) == b"abcd" and woke - written < 0.5

    reader = threading.Thread(target=lambda: results.append((ring.read(4, timeout=10), time.monotonic())))
    reader.start()
    time.sleep(0.05)
    closed = time.monotonic()
    ring.close()
    reader.join(timeout=5)
    data, woke = results.pop()
    assert data is None and woke - closed < 0.5
    assert not ring.write(b"late")


def test_ring_loses_nothing_when_the_consumer_keeps_up() -> None:
    chunk, chunks = 960, 2000
    payload = (np.arange(chunk * chunks, dtype=np.uint32) * 2654435761 % 251).astype(np.uint8)
    ring = RingBuffer(chunk * 256 + 123)  # not a multiple of the chunk: reads and writes wrap

    def produce() -> None:
        for i in range(chunks):
            ring.write(payload[i * chunk:(i + 1) * chunk].tobytes())
            if i % 16 == 0:
                time.sleep(0.001)
        ring.close()

    producer = threading.Thread(target=produce)
    producer.start()
    received = []
    while True:
        data = ring.read(1000, timeout=10)  # a read size unrelated to the write size
        if data is None:
            break
        received.append(data)
    producer.join(timeout=10)
    assert ring.overruns == 0
    assert np.array_equal(np.concatenate(received), payload)
