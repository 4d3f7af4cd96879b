"""The host and process figures published on <root>/telemetry.

A class rather than a function because psutil's cpu_percent() measures the CPU used *since the
previous call on the same Process object*: keeping one object across calls turns every publish
into the average over the last telemetry interval, which is what a dashboard wants. The app
merges in its own counters (inbox waiting, outbox queued, jobs, cache hit rates) via `extra`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from agent.mqtt.link import live
from agent.mqtt.messages import envelope
from agent.memory_budget import BudgetReader
from agent.ops.sampling import MB, disk_free_mb

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
# Sensor names that mean "the SoC" (Raspberry Pi, Intel, AMD, other ARM boards), best first.
_SOC_SENSORS = ("cpu_thermal", "soc_thermal", "coretemp", "k10temp", "cpu-thermal", "soc-thermal")


class TelemetryCollector:
    """Collects one telemetry dict per call; see `collect` for the keys."""

    def __init__(
        self,
        paths: Callable[[], list[Path]] = lambda: [],
        pid: int | None = None,
        thermal_zone: Path = THERMAL_ZONE,
        reader: BudgetReader | None = None,
    ) -> None:
        self._paths = paths
        self._reader = reader or BudgetReader()
        self._thermal_zone = thermal_zone
        self._process = psutil.Process(pid)
        # The first cpu_percent() call only sets the baseline and returns 0.0; take it now so the
        # first published figure is real.
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def collect(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Figures as a JSON-ready dict; keys in `extra` (uptime_s, queue sizes...) win on clashes.

        cpu_percent is the agent's own use since the previous call (100 = one full core);
        system_cpu_percent is all cores together (100 = all busy). temperature_c is null when the
        host does not report one (containers, most VMs). memory is of the budget that applies
        (agent/memory_budget.py): budget_mb and limit_source say whether that is the machine or
        the agent's cgroup limit; machine_available_mb is the whole machine's either way.
        """
        vm = psutil.virtual_memory()
        memory = self._reader.read().as_dict()
        memory["machine_available_mb"] = round(vm.available / MB, 1)
        figures: dict[str, Any] = {
            "cpu_percent": round(self._process.cpu_percent(None), 1),
            "system_cpu_percent": round(psutil.cpu_percent(None), 1),
            "load_avg": [round(value, 2) for value in os.getloadavg()],
            "memory": memory,
            "agent_rss_mb": round(self._process.memory_info().rss / MB, 1),
            "children_rss_mb": round(self._children_rss() / MB, 1),
            "temperature_c": self.temperature(),
            "disk_free_mb": self._disk_free(),
        }
        figures.update(extra)
        return figures

    def temperature(self) -> float | None:
        """SoC temperature in °C from psutil's sensors, else thermal_zone0, else None."""
        reading = _psutil_temperature()
        if reading is None:
            reading = _thermal_zone_temperature(self._thermal_zone)
        return None if reading is None else round(reading, 1)

    def _children_rss(self) -> int:
        total = 0
        try:
            children = self._process.children(recursive=True)
        except psutil.Error:
            return 0
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _disk_free(self) -> dict[str, float | None]:
        free: dict[str, float | None] = {}
        for path in self._paths():
            try:
                free[str(path)] = round(disk_free_mb(path), 1)
            except OSError as exc:
                log.debug("disk free of %s: %s", path, exc)
                free[str(path)] = None
        return free


class TelemetryTimer:
    """Publishes `build()` on <root>/telemetry every telemetry.interval_s while connected (QoS 0,
    not through the outbox: a stale figure is worth nothing) and hands each to `on_sent` (the
    retained `last/telemetry` copy). Settings and topic names are pushed with `reconfigure`, the
    connection with `attach`; `tick()` runs once per main-loop tick."""

    def __init__(self, build: Callable[[], dict[str, Any]], on_sent: Callable[[dict[str, Any]], None], *,
                 interval_s: float, topics: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._build, self._on_sent, self._clock = build, on_sent, clock
        self._interval_s, self._topics = interval_s, topics
        self._link: Any = None
        self._last = float("-inf")

    def reconfigure(self, settings: Any, topics: Any) -> None:
        self._interval_s, self._topics = settings.telemetry.interval_s, topics

    def attach(self, link: Any) -> None:
        self._link = link

    def tick(self) -> None:
        now = self._clock()
        if self._interval_s <= 0 or now - self._last < self._interval_s:
            return
        link = live(self._link)
        if link is not None:
            self._last = now
            stats = self._build()
            link.publish(self._topics.telemetry, envelope(self._topics.device_id, stats), qos=0)
            self._on_sent(stats)


def _psutil_temperature() -> float | None:
    sensors_temperatures = getattr(psutil, "sensors_temperatures", None)
    if sensors_temperatures is None:  # not available on this platform
        return None
    try:
        sensors = sensors_temperatures()
    except Exception as exc:  # noqa: BLE001 - a broken hwmon driver must not break telemetry
        log.debug("sensors_temperatures failed: %s", exc)
        return None
    for name in (*_SOC_SENSORS, *sorted(sensors)):
        readings = sensors.get(name) or []
        for reading in readings:
            if reading.current is not None and reading.current > -50:
                return float(reading.current)
    return None


def _thermal_zone_temperature(path: Path) -> float | None:
    try:
        return int(path.read_text().strip()) / 1000
    except (OSError, ValueError):
        return None
