"""Memory the kernel never has to enforce: an engine's peak need is checked before a job starts,
and an OOM kill that happens anyway is said at once.

- **Admission by need** (`check`, pushed into agent/jobs/admission.py): an engine that runs as a
  new process per job (whisper.cpp's CLI) adds its whole peak to the cgroup each time, so a job
  is let in only when that peak (the figure `doctor` uses, agent/ops/doctor.py) fits in what is
  free of the budget (agent/memory_budget.py: the machine, or the cgroup's limit when that
  is tighter). Otherwise the job waits (inbox, spool) or is refused with `memory_pressure`
  (requests, fleet jobs), and `alert/memory` (level `warning`, `reason: engine_need`) names the
  engine, its need and the budget. Engines whose model stays resident (PocketSphinx,
  faster-whisper, a kept server) are already in the budget's usage once loaded: nothing to add.
- **OOM kills** (`on_oom`, fed by agent/ops/oom_watch.py): `alert/memory` at `critical` with
  `reason: oom_kill` and the engine's name. Both alerts are this part's: they clear when the
  next job is done (an OOM alert) or the held job fits (a need alert), and never replace a
  critical alert of the memory monitor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from agent.jobs.admission import Refusal
from agent.ops.alerts import AlertBoard
from agent.ops.doctor import transcriber_mb
from agent.memory_budget import MB, BudgetReader
from agent.settings import Settings

log = logging.getLogger(__name__)

#: Engines that start a new process with the whole model for every run.
PER_RUN = frozenset({"whisper_cpp"})

ENGINE_NEED = "engine_need"
OOM_KILL = "oom_kill"


class MemoryGuard:
    def __init__(self, board: AlertBoard, settings: Settings, reader: BudgetReader | None = None) -> None:
        self._board = board
        self._reader = reader or BudgetReader()
        self._lock = threading.Lock()
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """New settings: the engine, its model (the need) and whether admission looks at it."""
        t = settings.transcriber
        need = transcriber_mb(t) if t.engine in PER_RUN and settings.memory.admit_by_engine_need else 0.0
        with self._lock:
            self.engine = t.engine
            self.need_mb = round(need, 1)
            self._retry_after_s = settings.jobs.retry_after_s

    # --- admission by need ---------------------------------------------------------------

    def check(self) -> Refusal | None:
        """None when the engine's peak fits in the free budget now, else `memory_pressure`."""
        with self._lock:
            need, engine = self.need_mb, self.engine
        if need <= 0:
            self._clear(ENGINE_NEED)
            return None
        budget = self._reader.read()
        free = budget.available_bytes / MB
        if need <= free:
            self._clear(ENGINE_NEED)
            return None
        figures = {"reason": ENGINE_NEED, "engine": engine, "need_mb": need, **budget.as_dict()}
        with self._board.lock:   # one alert per hold, and never over the monitor's critical one
            if self._ours() is None and self._board.level("memory") != "critical":
                log.warning("transcriber %s needs about %.0f MB at its peak, %.0f MB of the %.0f MB budget "
                            "is free: heavy work waits", engine, need, free, budget.limit_bytes / MB)
                self._board.raise_("memory", "warning", figures)
        return Refusal("memory_pressure", f"transcriber {engine} needs about {need:.0f} MB at its peak; "
                                          f"{free:.0f} MB of the {budget.limit_bytes / MB:.0f} MB memory budget "
                                          f"is free", self._retry_after_s)

    # --- OOM kills -----------------------------------------------------------------------

    def on_oom(self, new_kills: int, total: int) -> None:
        """The kernel killed `new_kills` processes in the agent's cgroup (`total` so far)."""
        with self._lock:
            engine = self.engine
        budget = self._reader.read()
        log.error("the kernel OOM-killed %d process(es) in the agent's cgroup (%d so far) while the "
                  "transcriber was %s", new_kills, total, engine)
        self._board.raise_("memory", "critical", {"reason": OOM_KILL, "engine": engine, "oom_kills": total,
                                                  "new_kills": new_kills, **budget.as_dict()})

    def observe_job(self, _event: str, body: Mapping[str, Any]) -> None:
        """A `job` observer: a job done after an OOM kill clears that alert."""
        if body.get("state") == "done":
            self._clear(OOM_KILL)

    # --- the alert -----------------------------------------------------------------------

    def _ours(self) -> str | None:
        """The reason of the current memory alert when this part raised it."""
        body = self._board.current.get("memory") or {}
        reason = body.get("reason")
        return reason if reason in (ENGINE_NEED, OOM_KILL) else None

    def _clear(self, reason: str) -> None:
        with self._board.lock:
            if self._ours() == reason:
                self._board.clear("memory", {"reason": reason, "engine": self.engine})
