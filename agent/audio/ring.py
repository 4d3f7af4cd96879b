"""A bounded byte ring between a real-time audio callback and the analyser thread.

PortAudio calls the capture callback on its own thread with a hard deadline: if it blocks, the
driver drops audio. So the producer side only copies bytes into memory allocated once at
start-up, holds a lock just for that copy, and when the consumer has fallen behind it drops the
new chunk and counts it (`overruns`, `overrun_bytes`) rather than waiting. The consumer side
blocks on a condition variable with a timeout, so an idle listener burns no CPU polling.

Chunks are dropped whole, never split, so the int16 sample alignment of the stream survives an
overrun.
"""

from __future__ import annotations

import threading
import time

import numpy as np


class RingBuffer:
    """Single-producer single-consumer byte FIFO of fixed capacity."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.capacity = int(capacity_bytes)
        self._buf = np.zeros(self.capacity, dtype=np.uint8)
        # A writable byte view of the same memory: slice assignment from a `bytes` object is a
        # plain memcpy with no temporary array.
        self._view = memoryview(self._buf).cast("B")
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._read_pos = 0
        self._size = 0
        self._wanted = 0  # bytes the waiting reader needs; 0 = nobody waiting
        self._closed = False
        self.overruns = 0
        self.overrun_bytes = 0
        self.written_bytes = 0

    # --- producer (real-time thread) ---------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Append `data` whole, or drop it and count an overrun when it does not fit.

        Never blocks beyond the lock held for the copy, never logs, allocates only the
        memoryview slices needed to wrap around the end of the buffer.
        """
        n = len(data)
        with self._lock:
            if self._closed:
                return False
            if n > self.capacity - self._size:
                self.overruns += 1
                self.overrun_bytes += n
                return False
            start = (self._read_pos + self._size) % self.capacity
            first = min(n, self.capacity - start)
            if first == n:
                self._view[start:start + n] = data
            else:
                src = memoryview(data)
                self._view[start:] = src[:first]
                self._view[:n - first] = src[first:]
            self._size += n
            self.written_bytes += n
            # Wake the reader only when its request can be served: one wake-up per frame,
            # not one per callback when callbacks are smaller than frames.
            if self._wanted and self._size >= self._wanted:
                self._cond.notify()
            return True

    # --- consumer ----------------------------------------------------------------------------

    def read(self, n: int, timeout: float | None = None) -> np.ndarray | None:
        """Return exactly `n` bytes (a fresh uint8 array), or None if they did not arrive in time.

        After `close()` the remaining bytes are still handed out; a final short remainder is
        returned as a shorter array, and None once the ring is closed and empty.
        """
        if n <= 0:
            raise ValueError("n must be positive")
        if n > self.capacity:
            raise ValueError(f"cannot read {n} bytes from a ring of {self.capacity}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._size < n and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._wanted = n
                try:
                    self._cond.wait(remaining)
                finally:
                    self._wanted = 0
            take = min(n, self._size)
            if take == 0:
                return None
            out = np.empty(take, dtype=np.uint8)
            start = self._read_pos
            first = min(take, self.capacity - start)
            out[:first] = self._buf[start:start + first]
            if first < take:
                out[first:] = self._buf[:take - first]
            self._read_pos = (start + take) % self.capacity
            self._size -= take
            return out

    def close(self) -> None:
        """Refuse further writes and wake a waiting reader (end of stream or stop)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Drop everything buffered (after a pause, stale audio is worse than none)."""
        with self._lock:
            self._read_pos = 0
            self._size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def available(self) -> int:
        with self._lock:
            return self._size
