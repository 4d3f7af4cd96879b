"""The VAD result cache, apart from the VAD so that the agent can own one without loading numpy.

The agent process holds it from the start (its hits and misses are in `stats`), while numpy and
webrtcvad load only with the first audio: idle, the agent stays within its memory budget.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Hashable

if TYPE_CHECKING:
    import numpy as np


class VadCache:
    """Bounded, thread-safe LRU from a buffer hash to its frame decisions.

    The key covers the whole buffer and the classifier parameters: two recordings that share
    their first and last seconds (same jingle, same silence) must not share a result.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(0, int(max_entries))
        self._entries: OrderedDict[bytes, tuple[bool, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(buffer: np.ndarray, params: Hashable) -> bytes:
        import numpy as np  # already loaded by whoever holds a buffer

        data = np.ascontiguousarray(buffer, dtype=np.int16)
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(params).encode())
        h.update(b"\0")
        h.update(memoryview(data).cast("B"))
        return h.digest()

    def get(self, key: bytes) -> tuple[bool, ...] | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, value: tuple[bool, ...]) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}
