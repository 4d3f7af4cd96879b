"""Notices the kernel OOM-killing a process in the agent's cgroup, within a fraction of a second.

The memory monitor samples every few seconds, and an engine that spikes past the cgroup's limit
is killed between two samples: memory looks fine before and after. The kernel counts every such
kill (`oom_kill` in cgroup v2 `memory.events`, v1 `memory.oom_control`; agent/memory_budget.py
reads it), so this thread reads that one small file a few times a second and reports each rise.
A count that falls (the agent was moved to another cgroup) is a new baseline, not a kill.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.memory_budget import BudgetReader

log = logging.getLogger(__name__)

#: How often the counter is read: the alert must be out within 1 s of the kill.
INTERVAL_S = 0.25


class OomWatch:
    def __init__(self, on_kill: Callable[[int, int], None], reader: BudgetReader | None = None,
                 interval_s: float = INTERVAL_S) -> None:
        """`on_kill(new_kills, total)` runs on the watch's thread after each rise of the count."""
        self._on_kill = on_kill
        self._reader = reader or BudgetReader()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.total: int | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.total = self._reader.oom_kills()
        self._thread = threading.Thread(target=self._run, name="oom-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def poll(self) -> None:
        """One look at the counter (also what the thread does)."""
        count = self._reader.oom_kills()
        if count is None:
            return
        previous, self.total = self.total, count
        if previous is not None and count > previous:
            self._on_kill(count - previous, count)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watch must outlive whatever it reports to
                log.exception("oom watch: reporting a kill failed")
