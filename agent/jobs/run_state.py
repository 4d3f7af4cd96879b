"""The run state: paused, the microphone switched off, jobs rejected, started when.

One small part owns these, so the commands (handlers/), the listening part and readiness hold
the part itself rather than getters on the App. Admission keeps its own copy of `paused`
(pushed by the app together with this one) because it decides under its own lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class RunState:
    def __init__(self, started_at: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.started_at = started_at
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self.paused = False
        self.mic_off = False    # the `listening` command closed the microphone (pause stops all work)
        self.rejected = 0       # jobs answered busy / memory_pressure since start

    def uptime_s(self) -> float:
        return round(self._clock() - self._t0, 1)

    def observe_job(self, _event: str, body: dict[str, Any]) -> None:
        """A `job` event observer: counts the rejected ones."""
        if body.get("state") == "rejected":
            with self._lock:
                self.rejected += 1
