"""What alerts and job outcomes make the agent do, registered by the app at wiring time.

- the `engine` alert: raised after jobs.engine_alert_after engine failures in a row (EngineHealth,
  fed with `job` events), or as a warning when a summary fell back to extractive; cleared by the
  next success;
- the monitor's memory and disk alerts on the alert board, with swap for memory alerts;
- memory.restart_summarizer_when_largest (off by default): while memory is critical (on entering
  and on every reminder), restart the summarizer's server when it is the largest process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from agent.ops.alerts import AlertBoard
from agent.ops.monitor import Alert
from agent.ops.sampling import MemorySample

log = logging.getLogger(__name__)

#: Error codes that mean an engine failed (not the audio, not the request).
ENGINE_ERROR_CODES = frozenset({"engine_error", "engine_killed", "engine_timeout", "engine_unavailable"})


def summarizer_restart_due(enabled: bool, kind: str, level: str, data: Mapping[str, Any],
                           summarizer_pid: int | None) -> bool:
    """memory.restart_summarizer_when_largest: restart only when memory is critical and the largest
    process on the system is the summarizer's server (a model server that keeps growing is the
    usual way a 512 MB device ends up calling the OOM killer)."""
    if not enabled or kind != "memory" or level != "critical" or summarizer_pid is None:
        return False
    top = data.get("top_process") or {}
    return top.get("pid") == summarizer_pid


class EngineHealth:
    """Counts consecutive engine failures across jobs; `after` in a row raise the `engine` alert,
    the next successful job clears it. Fed with the bodies of `job` events."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.failures = 0
        self.alerting = False
        self._lock = threading.Lock()

    def reconfigure(self, after: int) -> None:
        """A new threshold (jobs.engine_alert_after changed)."""
        self.after = after

    def observe(self, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """("raise", data) when the alert starts, ("clear", data) when it ends, else None."""
        state = body.get("state")
        with self._lock:
            if state == "failed":
                error = body.get("error") or {}
                if error.get("code") not in ENGINE_ERROR_CODES:
                    return None   # bad audio is not the engine's fault
                self.failures += 1
                if self.failures >= self.after and not self.alerting:
                    self.alerting = True
                    return "raise", {"failures": self.failures, "threshold": self.after,
                                     "job_id": body.get("job_id"),
                                     "error": {"code": error.get("code"), "message": error.get("message")}}
                return None
            if state == "done":
                failures, self.failures = self.failures, 0
                if self.alerting:
                    self.alerting = False
                    return "clear", {"failures": failures, "job_id": body.get("job_id")}
            return None



class AlertReactions:
    def __init__(self, board: AlertBoard, engines: Any, settings: Any) -> None:
        self._board = board
        self._engines = engines
        self.health = EngineHealth(settings.jobs.engine_alert_after)
        self._restart_when_largest = settings.memory.restart_summarizer_when_largest

    def reconfigure(self, settings: Any) -> None:
        self.health.reconfigure(settings.jobs.engine_alert_after)
        self._restart_when_largest = settings.memory.restart_summarizer_when_largest

    # --- engines -------------------------------------------------------------------------

    def observe_job(self, _event: str, body: dict[str, Any]) -> None:
        """A `job` event observer: consecutive engine failures raise the `engine` alert."""
        change = self.health.observe(body)
        if change is None:
            return
        action, data = change
        engines = {kind: d.get("name") for kind, d in self._engines.describe().items()}
        if action == "raise":
            log.error("%d engine failures in a row: raising the engine alert", data["failures"])
            self._board.raise_("engine", "critical", {**data, "engines": engines})
        else:
            self._board.clear("engine", {**data, "engines": engines})

    def on_summary(self, fallback: dict[str, Any] | None) -> None:
        """A job's summary fell back to extractive (raise the `engine` alert, unless one is up
        already: a transcriber alert is not downgraded) or the summarizer answered again (clear
        the alert, if it is the fallback's)."""
        current = self._board.current.get("engine")
        if fallback is not None and current is None:
            self._board.raise_("engine", "warning", {"summary_fallback": fallback})
        elif fallback is None and current is not None and "summary_fallback" in current:
            self._board.clear("engine", {"summary_fallback": None})

    # --- the monitor's alerts ------------------------------------------------------------

    def on_monitor_alert(self, alert: Alert, sample: MemorySample | None) -> None:
        """On the board (memory alerts with swap), then the summarizer restart when due."""
        data = dict(alert.data)
        if alert.kind == "memory" and sample is not None:
            data.setdefault("swap_used_percent", sample.swap_used_percent)
        if alert.level == "ok":
            self._board.clear(alert.kind, data)
            return
        self._board.raise_(alert.kind, alert.level, data, repeat=alert.repeat)
        self.restart_summarizer_if_due(alert)

    def restart_summarizer_if_due(self, alert: Alert) -> None:
        slot = self._engines.summarizer
        if summarizer_restart_due(self._restart_when_largest, alert.kind, alert.level, alert.data,
                                  slot.server_pid):
            log.warning("memory critical and the summarizer server (pid %s) is the largest process: "
                        "restarting it", slot.server_pid)
            slot.restart()
