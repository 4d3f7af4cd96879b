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


#: Default bound on the bytes the cache holds, whatever its entry count: the entry bound alone let
#: 256 results of 30-minute files (60 000 frames each) reach about 120 MB on a 512 MB device.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
#: What one entry costs beyond its decisions: the key, the OrderedDict node, the bytes header.
ENTRY_OVERHEAD = 200


class VadCache:
    """Bounded, thread-safe LRU from a buffer hash to its frame decisions.

    The key covers the whole buffer and the classifier parameters: two recordings that share
    their first and last seconds (same jingle, same silence) must not share a result. Bounded
    by entries and by bytes (`max_bytes`, oldest out first); decisions are stored one byte per
    frame (a tuple of bools costs eight), and a result larger than `max_bytes` is not kept.
    """

    def __init__(self, max_entries: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max(0, int(max_entries))
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
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
        return tuple(map(bool, value))

    def put(self, key: bytes, value: tuple[bool, ...]) -> None:
        packed = bytes(map(bool, value))
        if self.max_entries == 0 or _cost(key, packed) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _cost(key, old)
            self._entries[key] = packed
            self._bytes += _cost(key, packed)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                gone_key, gone = self._entries.popitem(last=False)
                self._bytes -= _cost(gone_key, gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """What the entries cost, by the same estimate the bound uses."""
        return self._bytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}


def _cost(key: bytes, packed: bytes) -> int:
    return len(key) + len(packed) + ENTRY_OVERHEAD
