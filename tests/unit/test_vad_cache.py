"""The VAD cache is a bounded, thread-safe LRU."""

from __future__ import annotations

import threading

import numpy as np

from agent.audio.vad import VadCache


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
