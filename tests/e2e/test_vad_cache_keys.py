"""The VAD cache on real espeak-ng speech: a hit on the same buffer; the key covers the whole buffer and the classifier's parameters."""

from __future__ import annotations

import numpy as np

from agent.audio.vad import FrameClassifier, VadCache
from tests.support.speech import SAMPLE_RATE, build_speech, white_noise


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
