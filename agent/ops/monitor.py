"""Memory and disk levels with hysteresis, turned into alerts the app publishes and acts on.

On a 512 MB Pi the dangerous moment is a model server growing until the kernel's OOM killer
picks a victim; the agent must notice first, say who is large, and refuse heavy work while
memory is critical. Levels use hysteresis so a value hovering at a threshold does not flood the
broker with alerts, and a critical level is re-announced every `repeat_s` so a dashboard that
missed the change still learns about it. Trackers are pure (samples in, alerts out) so they are
tested with synthetic samples; `Monitor` is the thin thread around them. No MQTT here.

Percentages and "available" are of the budget that really applies (agent/memory_budget.py): the
machine's memory, or the agent's cgroup limit (systemd `MemoryMax=`, a container) when that is
tighter, so alerts and shedding happen before the kernel's OOM killer acts on that limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.memory_budget import BudgetReader
from agent.ops.sampling import MemorySample, disk_free_mb, existing, sample_memory
from agent.settings import MemorySettings

log = logging.getLogger(__name__)

LEVELS = ("ok", "warning", "critical")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}


@dataclass(frozen=True)
class Alert:
    """A level change (or, while critical, a reminder with repeat=True)."""

    kind: str  # "memory" | "disk"
    level: str  # "ok" | "warning" | "critical"
    data: dict[str, Any]
    repeat: bool = False


class LevelTracker:
    """ok -> warning -> critical for memory, with hysteresis and critical reminders.

    Entering: warning at used >= warn_percent; critical at used >= critical_percent or
    available_mb < min_available_mb (when set). Leaving a level needs used below its threshold
    minus hysteresis_percent, and for the floor available above floor * (1 + hysteresis/100).
    """

    def __init__(self, settings: MemorySettings) -> None:
        self.settings = settings
        self.level = "ok"
        self._critical_by_floor = False
        self._last_alert = 0.0

    def update(self, sample: MemorySample, now: float) -> Alert | None:
        """Feed one sample; an Alert when the level changed or a critical reminder is due."""
        previous = self.level
        by_percent, by_floor = self._critical(sample)
        if by_percent or by_floor:
            level = "critical"
        elif self._warning(sample):
            level = "warning"
        else:
            level = "ok"

        if level == "critical" and by_percent != by_floor:
            # What holds us critical; when both do, the reason we already gave stands.
            self._critical_by_floor = by_floor
        if level != previous:
            going_up = _RANK[level] > _RANK[previous]
            threshold, unit = self._threshold(level if going_up else previous)
            self.level = level
            self._last_alert = now
            return self._alert(sample, previous, threshold, unit, repeat=False)
        if level == "critical":
            if now - self._last_alert >= self.settings.repeat_s:
                self._last_alert = now
                threshold, unit = self._threshold("critical")
                return self._alert(sample, previous, threshold, unit, repeat=True)
        return None

    def _critical(self, sample: MemorySample) -> tuple[bool, bool]:
        """(critical by percent, critical by the available floor), hysteresis applied."""
        s = self.settings
        staying = self.level == "critical"
        margin = s.hysteresis_percent if staying else 0.0
        by_percent = sample.used_percent >= s.critical_percent - margin
        by_floor = False
        if s.min_available_mb is not None:
            if staying:
                by_floor = sample.available_mb <= s.min_available_mb * (1 + s.hysteresis_percent / 100)
            else:
                by_floor = sample.available_mb < s.min_available_mb
        return by_percent, by_floor

    def _warning(self, sample: MemorySample) -> bool:
        s = self.settings
        margin = s.hysteresis_percent if _RANK[self.level] >= _RANK["warning"] else 0.0
        return sample.used_percent >= s.warn_percent - margin

    def _threshold(self, level: str) -> tuple[float, str]:
        """The configured threshold of `level`: the boundary that was crossed, either way."""
        s = self.settings
        if level == "critical":
            if self._critical_by_floor and s.min_available_mb is not None:
                return s.min_available_mb, "mb"
            return s.critical_percent, "percent"
        return s.warn_percent, "percent"

    def _alert(self, sample: MemorySample, previous: str, threshold: float, unit: str, repeat: bool) -> Alert:
        data = {
            "used_percent": sample.used_percent,
            "available_mb": sample.available_mb,
            "agent_rss_mb": sample.agent_rss_mb,
            "children_rss_mb": sample.children_rss_mb,
            "top_process": dict(sample.top_process),
            "budget_mb": sample.budget_mb,
            "used_mb": sample.used_mb,
            "limit_source": sample.limit_source,
            "threshold": threshold,
            "threshold_unit": unit,
            "previous": previous,
        }
        return Alert(kind="memory", level=self.level, data=data, repeat=repeat)


class DiskTracker:
    """Free disk of some folders vs min_disk_free_mb: "ok" / "critical" per filesystem, on change.

    Folders on the same filesystem (usual on a Pi's single SD card) are reported once, under the
    first path given, so one full disk is one alert. Clearing needs hysteresis_percent of headroom.
    """

    def __init__(self, settings: MemorySettings, free_mb: Callable[[Path], float] = disk_free_mb) -> None:
        self.settings = settings
        self._free_mb = free_mb
        self.levels: dict[str, str] = {}

    def update(self, paths: list[Path], now: float) -> list[Alert]:
        threshold = self.settings.min_disk_free_mb
        clear_above = threshold * (1 + self.settings.hysteresis_percent / 100)
        alerts: list[Alert] = []
        seen: set[int] = set()
        for path in paths:
            try:
                device = existing(path).stat().st_dev
                if device in seen:
                    continue
                seen.add(device)
                free = self._free_mb(path)
            except OSError as exc:
                log.debug("disk check of %s failed: %s", path, exc)
                continue
            key = str(path)
            previous = self.levels.get(key, "ok")
            if previous == "critical":
                level = "ok" if free > clear_above else "critical"
            else:
                level = "critical" if free < threshold else "ok"
            self.levels[key] = level
            if level != previous:
                data = {"path": key, "free_mb": round(free, 1), "threshold_mb": threshold}
                alerts.append(Alert(kind="disk", level=level, data=data))
        return alerts


class Monitor:
    """The thread that samples every interval_s, feeds the trackers and hands alerts to on_alert.

    Nothing that goes wrong inside (a sampler error, a failing callback) stops the thread: the
    monitor must outlive whatever it is watching. Repeated identical errors are logged once.
    """

    def __init__(
        self,
        settings: MemorySettings,
        paths: Callable[[], list[Path]],
        on_alert: Callable[[Alert], None],
        sampler: Callable[[], MemorySample] | None = None,
        disk_free: Callable[[Path], float] = disk_free_mb,
        clock: Callable[[], float] = time.monotonic,
        reader: BudgetReader | None = None,
    ) -> None:
        self._settings = settings
        self._reader = reader or BudgetReader()
        self._paths = paths
        self._on_alert = on_alert
        self._sampler = sampler or (lambda: sample_memory(reader=self._reader))
        self._clock = clock
        self._memory = LevelTracker(settings)
        self._disk = DiskTracker(settings, disk_free)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self.last_sample: MemorySample | None = None

    @property
    def level(self) -> str:
        """The current memory level: "ok", "warning" or "critical"."""
        return self._memory.level

    @property
    def critical(self) -> bool:
        return self._memory.level == "critical"

    def budget(self) -> dict[str, Any]:
        """{"budget_mb", "used_mb", "available_mb", "used_percent", "limit_source"} for `state`.

        From the last sample, so it matches the level; read afresh (a few small files) before
        the first one.
        """
        sample = self.last_sample
        if sample is not None:
            return sample.budget()
        figures = self._reader.read().as_dict()
        figures.pop("cgroup", None)
        return figures

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def reconfigure(self, settings: MemorySettings) -> None:
        """New thresholds apply to the next sample, taken now; the current levels are kept."""
        with self._lock:
            self._settings = settings
            self._memory.settings = settings
            self._disk.settings = settings
        self._wake.set()

    def poll(self) -> list[Alert]:
        """One round: sample, update the trackers, return the alerts (also used by the thread)."""
        sample = self._sampler()
        paths = self._paths()
        now = self._clock()
        with self._lock:
            self.last_sample = sample
            alerts = self._disk.update(paths, now)
            memory_alert = self._memory.update(sample, now)
        if memory_alert is not None:
            alerts.insert(0, memory_alert)
        return alerts

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                alerts = self.poll()
            except Exception as exc:  # noqa: BLE001 - keep monitoring whatever happens
                self._log_error("sampling failed", exc)
            else:
                if all([self._deliver(alert) for alert in alerts]):
                    self._last_error = None
            with self._lock:
                interval = self._settings.interval_s
            self._wake.wait(interval)
            self._wake.clear()

    def _deliver(self, alert: Alert) -> bool:
        try:
            self._on_alert(alert)
        except Exception as exc:  # noqa: BLE001
            self._log_error("alert handler failed", exc)
            return False
        return True

    def _log_error(self, what: str, exc: Exception) -> None:
        text = f"{what}: {exc!r}"
        if text != self._last_error:
            log.warning("%s", text, exc_info=exc)
            self._last_error = text
        else:
            log.debug("%s (again)", text)
