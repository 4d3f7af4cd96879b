"""The bounded job slot: heavy work that finds no free slot is refused, never queued in memory.

The earlier web prototype was killed for memory on 20 % of days under load; a fixed number of
slots (1 on a 512 MB device) and a `busy` answer is what keeps the agent alive. The inbox and
the microphone spool wait on disk for a slot instead.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Callable


def new_job_id() -> str:
    """Sortable by creation time and unique without coordination."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


class JobSlot:
    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = limit
        self._running = 0
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` (quick, any thread) after every take, release or new limit: the fleet
        worker leaves or rejoins its group at once instead of polling the slot."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def running(self) -> int:
        return self._running

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()
        self._changed()

    def try_acquire(self) -> bool:
        with self._cond:
            if self._running >= self._limit:
                return False
            self._running += 1
        self._changed()
        return True

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for a slot (for work that waits on disk, not in memory)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._running < self._limit, timeout=timeout):
                return False
            self._running += 1
        self._changed()
        return True

    def release(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()
        self._changed()

    def wait_free(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._running < self._limit, timeout=timeout)
