"""A bounded number of concurrent users of one engine.

Why: on 2 cores, two whisper.cpp runs at once took 29 s where one took 2 s; engine threads x
concurrent jobs must not exceed the cores. The pipeline keeps one stage for transcription and
one for summaries, so with two job slots job N can be summarized while job N+1 is transcribed.
"""

from __future__ import annotations

import threading


class Stage:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def __enter__(self) -> None:
        self._sem.acquire()

    def __exit__(self, *exc: object) -> None:
        self._sem.release()

    def acquire(self, timeout: float) -> bool:
        return self._sem.acquire(timeout=timeout)

    def release(self) -> None:
        self._sem.release()
