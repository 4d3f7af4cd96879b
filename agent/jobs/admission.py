"""Admission: the one step every source asks before heavy work starts.

Paused? Memory critical? Stopping? A job slot free? Does the engine's peak need fit the memory
that is free (`set_need_check`, agent/ops/memory_guard.py)? The answer is a `Ticket` (it holds the slot)
or a coded `Refusal`. The inbox and the microphone spool wait on disk, so their feeders block
in `admit()` until they are let in; a request and a fleet job are answered at once
(`try_admit()`): a request gets `busy` / `memory_pressure` back over MQTT, a fleet job goes back
to its group. The state the answer depends on is pushed in by the app (`set_paused`,
`set_memory_critical`, `set_stopping`, `reconfigure`) so this module reads nothing above it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from agent.errors import RequestError
from agent.jobs.slot import JobSlot

#: The refusal codes; `busy` and `memory_pressure` are part of the MQTT API.
CODES = ("busy", "memory_pressure", "paused", "stopping")

#: Free memory changes without anyone telling admission: a feeder held back by the engine's
#: need looks again this often.
NEED_RECHECK_S = 1.0


@dataclass(frozen=True)
class Refusal:
    """Why work cannot start now, and when to ask again."""

    code: str                       # one of CODES
    message: str
    retry_after_s: float | None = None

    def error(self) -> RequestError:
        """The answer a requester gets over MQTT (the one place that builds it)."""
        return RequestError(self.message, code=self.code, retry_after_s=self.retry_after_s)


class Ticket:
    """One held job slot. `release()` may be called any number of times (a `finally` after an
    early release must not give back a slot someone else now holds)."""

    def __init__(self, slot: JobSlot) -> None:
        self._slot = slot
        self._lock = threading.Lock()
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._slot.release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    def __init__(self, slot: JobSlot, *, retry_after_s: float | None = None) -> None:
        self.slot = slot
        self._cond = threading.Condition(threading.RLock())
        self._paused = False
        self._memory_critical = False
        self._stopping = False
        self._retry_after_s = retry_after_s
        self._listeners: list[Callable[[], None]] = []
        self._need_check: Callable[[], Refusal | None] = lambda: None
        slot.on_change(self._changed)

    # --- pushed state --------------------------------------------------------------------

    def reconfigure(self, settings: Any) -> None:
        """New settings: only `jobs.retry_after_s` is read here (the slot limit is the app's)."""
        with self._cond:
            self._retry_after_s = settings.jobs.retry_after_s

    def set_paused(self, paused: bool) -> None:
        self._set("_paused", paused)

    def set_memory_critical(self, critical: bool) -> None:
        self._set("_memory_critical", critical)

    def set_stopping(self, stopping: bool = True) -> None:
        self._set("_stopping", stopping)

    def set_need_check(self, check: Callable[[], Refusal | None]) -> None:
        """`check()`: a `memory_pressure` refusal when the chosen engine's peak need does not fit
        the free memory budget now, else None. Asked only when a slot is free, so a full slot
        still answers `busy` (a running job's memory is in the budget's usage already)."""
        self._need_check = check

    def _set(self, name: str, value: bool) -> None:
        with self._cond:
            if getattr(self, name) == value:
                return
            setattr(self, name, value)
        self._changed()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` (quick, any thread) after any change that may let work in or keep it out."""
        self._listeners.append(listener)

    def wake(self) -> None:
        """Make blocked `admit()` calls look again (e.g. at their `cancelled` flag)."""
        with self._cond:
            self._cond.notify_all()

    def _changed(self) -> None:
        self.wake()
        for listener in self._listeners:
            listener()

    # --- the questions -------------------------------------------------------------------

    @property
    def retry_after_s(self) -> float | None:
        return self._retry_after_s

    @property
    def limit(self) -> int:
        return self.slot.limit

    def open(self) -> bool:
        """Work may be taken at all (not paused, memory not critical, not stopping)."""
        return self.closed_by() is None

    def closed_by(self, *, request: bool = False) -> Refusal | None:
        """The refusal that holds whatever the slot says, or None.

        `request=True`: a request someone waits for is refused only for memory (and, through its
        limit of 0 while stopping, by a full slot: `busy`); pause stops the work the device takes
        on its own (inbox, microphone, fleet), not the answers it owes."""
        with self._cond:
            if self._paused and not request:
                return Refusal("paused", "the device is paused", self._retry_after_s)
            if self._memory_critical:
                return Refusal("memory_pressure", "memory is critical; try again later", self._retry_after_s)
            if self._stopping and not request:
                return Refusal("stopping", "the device is stopping", self._retry_after_s)
        return None

    def busy(self) -> Refusal:
        return Refusal("busy", f"all {self.slot.limit} job slot(s) are taken", self._retry_after_s)

    def try_admit(self, *, request: bool = False) -> Ticket | Refusal:
        """At once: a ticket, or why not (for requests and fleet jobs)."""
        refusal = self.closed_by(request=request)
        if refusal is not None:
            return refusal
        if self.slot.running >= self.slot.limit:
            return self.busy()
        need = self._need_check()
        if need is not None:
            return need
        if not self.slot.try_acquire():
            return self.busy()
        return Ticket(self.slot)

    def admit(self, timeout: float | None = None, cancelled: Callable[[], bool] = lambda: False) -> Ticket | None:
        """Block until admitted (a ticket), or None once `cancelled()` or after `timeout` seconds.
        Wakes on every pushed change and every slot take or release (for feeders that wait on disk),
        and every NEED_RECHECK_S while the engine's need does not fit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if cancelled():
                    return None
                held_by_need = False
                if self.open() and self.slot.running < self.slot.limit:
                    if self._need_check() is not None:
                        held_by_need = True
                    elif self.slot.try_acquire():
                        return Ticket(self.slot)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                if held_by_need:
                    left = NEED_RECHECK_S if left is None else min(left, NEED_RECHECK_S)
                self._cond.wait(left)
