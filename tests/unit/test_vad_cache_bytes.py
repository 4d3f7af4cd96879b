"""The VAD cache is bounded by bytes, not only by entries."""

from __future__ import annotations

from agent.audio.vad_cache import VadCache


def test_vad_cache_is_bounded_by_bytes_not_only_entries() -> None:
    frames = 60_000   # a 30-minute file in 30 ms frames
    cache = VadCache(256, max_bytes=1_000_000)
    results = {}
    for i in range(40):
        key = i.to_bytes(16, "big")
        value = tuple(bool((j * (i + 1)) % 3) for j in range(frames))
        results[key] = value
        cache.put(key, value)
    assert cache.size_bytes <= 1_000_000
    assert 0 < len(cache) < 40
    newest = (39).to_bytes(16, "big")
    assert cache.get(newest) == results[newest]
    assert cache.get((0).to_bytes(16, "big")) is None   # the oldest went first
    assert cache.stats()["bytes"] == cache.size_bytes


def test_vad_cache_default_keeps_256_long_results_well_under_the_old_120_mb() -> None:
    cache = VadCache(256)
    value = tuple([True, False] * 30_000)
    for i in range(256):
        cache.put(i.to_bytes(16, "big"), value)
    assert cache.size_bytes <= 8 * 1024 * 1024
