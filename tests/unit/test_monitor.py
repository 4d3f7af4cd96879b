"""Memory/disk levels from synthetic samples, the Monitor thread, telemetry figures."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import psutil
import pytest

from agent.ops.monitor import Alert, DiskTracker, LevelTracker, Monitor
from agent.ops.sampling import MemorySample, disk_free_mb
from agent.settings import MemorySettings
from agent.ops.telemetry import TelemetryCollector
from tests.support.wait import wait_until


SETTINGS = MemorySettings()  # warn 80, critical 92, hysteresis 3, repeat 60 s
TOP = {"pid": 4242, "name": "llama-server", "rss_mb": 250.0}


def sample(used: float, available: float = 1000.0) -> MemorySample:
    return MemorySample(used_percent=used, available_mb=available, swap_used_percent=0.0,
                        agent_rss_mb=45.0, children_rss_mb=250.0, top_process=TOP)


def feed(tracker: LevelTracker, values: list[float], start: float = 0.0) -> list[Alert]:
    """Feed used percents one second apart; the alerts they produced."""
    alerts = []
    for i, used in enumerate(values):
        alert = tracker.update(sample(used), start + i)
        if alert is not None:
            alerts.append(alert)
    return alerts


def test_levels_up_and_down_with_hysteresis() -> None:
    tracker = LevelTracker(SETTINGS)
    steps = [
        # used, expected level, alert expected (level, previous, threshold) or None
        (50, "ok", None),
        (81, "warning", ("warning", "ok", 80.0)),
        (93, "critical", ("critical", "warning", 92.0)),
        (91, "critical", None),  # threshold - 1: hysteresis keeps it critical
        (89, "critical", None),  # exactly threshold - hysteresis: still not below it
        (88, "warning", ("warning", "critical", 92.0)),
        (78, "warning", None),
        (76, "ok", ("ok", "warning", 80.0)),
    ]
    for i, (used, level, expected) in enumerate(steps):
        alert = tracker.update(sample(used), float(i))
        assert tracker.level == level, f"at used={used}"
        if expected is None:
            assert alert is None, f"no alert at used={used}"
        else:
            assert alert is not None, f"alert at used={used}"
            assert (alert.level, alert.data["previous"], alert.data["threshold"]) == expected
            assert alert.kind == "memory" and not alert.repeat


def test_alert_data_names_the_culprits() -> None:
    alert = LevelTracker(SETTINGS).update(sample(95, available=20), 0.0)
    assert alert is not None and alert.level == "critical"
    assert alert.data == {
        "used_percent": 95, "available_mb": 20, "agent_rss_mb": 45.0, "children_rss_mb": 250.0,
        "top_process": TOP, "budget_mb": 0.0, "used_mb": 0.0, "limit_source": "machine",
        "threshold": 92.0, "threshold_unit": "percent", "previous": "ok",
    }


@pytest.mark.parametrize(("low", "high", "level"), [(79, 81, "warning"), (91, 93, "critical")])
def test_no_flapping_around_a_threshold(low: float, high: float, level: str) -> None:
    tracker = LevelTracker(SETTINGS)
    tracker.update(sample(high), 0.0)
    alerts = feed(tracker, [low, high] * 20, start=1.0)  # 40 s: no critical repeat is due yet
    assert alerts == [], "oscillating ±1 around the entry threshold changes nothing once entered"
    assert tracker.level == level


def test_oscillating_below_a_threshold_alerts_once() -> None:
    alerts = feed(LevelTracker(SETTINGS), [79, 81] * 20)
    assert [a.level for a in alerts] == ["warning"]


def test_oscillating_at_the_exit_threshold_alerts_once() -> None:
    tracker = LevelTracker(SETTINGS)
    tracker.update(sample(85), 0.0)
    alerts = feed(tracker, [76, 78] * 20, start=1.0)
    assert [a.level for a in alerts] == ["ok"]


def test_critical_repeats_every_repeat_s() -> None:
    tracker = LevelTracker(dataclasses.replace(SETTINGS, repeat_s=60))
    first = tracker.update(sample(95), 0.0)
    assert first is not None and not first.repeat
    got = {t: tracker.update(sample(95), float(t)) for t in range(5, 200, 5)}
    repeats = {t: a for t, a in got.items() if a is not None}
    assert sorted(repeats) == [60, 120, 180]
    assert all(a.repeat and a.level == "critical" and a.data["threshold"] == 92.0 for a in repeats.values())
    assert tracker.update(sample(50), 200.0).level == "ok"
    assert feed(tracker, [50] * 200, start=201.0) == [], "no repeats once the level cleared"


def test_warning_does_not_repeat() -> None:
    tracker = LevelTracker(SETTINGS)
    assert len(feed(tracker, [85] * 300)) == 1


def test_min_available_floor() -> None:
    tracker = LevelTracker(dataclasses.replace(SETTINGS, min_available_mb=100.0))
    assert tracker.update(sample(50, available=150), 0.0) is None
    alert = tracker.update(sample(50, available=90), 1.0)
    assert alert is not None and alert.level == "critical"
    assert (alert.data["threshold"], alert.data["threshold_unit"]) == (100.0, "mb")
    assert tracker.update(sample(50, available=102), 2.0) is None, "within 3 % of the floor: still critical"
    assert tracker.level == "critical"
    alert = tracker.update(sample(50, available=104), 3.0)
    assert alert is not None
    assert (alert.level, alert.data["previous"], alert.data["threshold"]) == ("ok", "critical", 100.0)


def test_floor_and_percent_together() -> None:
    tracker = LevelTracker(dataclasses.replace(SETTINGS, min_available_mb=100.0))
    assert tracker.update(sample(95, available=50), 0.0).data["threshold_unit"] == "percent"
    assert tracker.update(sample(85, available=50), 1.0) is None, "the floor alone keeps it critical"
    alert = tracker.update(sample(85, available=500), 2.0)
    assert alert is not None and alert.level == "warning" and alert.data["threshold"] == 100.0


def test_straight_from_ok_to_critical() -> None:
    alerts = feed(LevelTracker(SETTINGS), [40, 97, 40])
    assert [(a.level, a.data["previous"]) for a in alerts] == [("critical", "ok"), ("ok", "critical")]


def test_disk_levels_with_hysteresis(tmp_path: Path) -> None:
    free = {"mb": 500.0}
    tracker = DiskTracker(SETTINGS, free_mb=lambda path: free["mb"])  # min 100 MB, clears above 103
    paths = [tmp_path]
    results = []
    for mb in (500, 150, 99, 50, 102, 104, 99.5):
        free["mb"] = mb
        results.append(tracker.update(paths, 0.0))
    changes = [(a.level, a.data["free_mb"]) for alerts in results for a in alerts]
    assert changes == [("critical", 99), ("ok", 104), ("critical", 99.5)]
    assert results[2][0] == Alert(kind="disk", level="critical",
                                  data={"path": str(tmp_path), "free_mb": 99, "threshold_mb": 100.0})


def test_one_alert_per_filesystem(tmp_path: Path) -> None:
    tracker = DiskTracker(SETTINGS, free_mb=lambda path: 10.0)
    alerts = tracker.update([tmp_path / "inbox", tmp_path / "state"], 0.0)
    assert [a.data["path"] for a in alerts] == [str(tmp_path / "inbox")]


def test_disk_free_of_a_folder_not_yet_created(tmp_path: Path) -> None:
    assert disk_free_mb(tmp_path / "missing" / "deeper") == pytest.approx(disk_free_mb(tmp_path), rel=0.01)


class Sink:
    """Collects alerts; wait_for() bounds every wait."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self._cond = threading.Condition()

    def __call__(self, alert: Alert) -> None:
        with self._cond:
            self.alerts.append(alert)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 3.0) -> list[Alert]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.alerts) >= count, timeout)
        assert ok, f"waited {timeout} s for {count} alerts, got {self.alerts}"
        return list(self.alerts)


def test_monitor_delivers_alerts_and_stops_promptly(tmp_path: Path) -> None:
    values = iter([50, 85, 95] + [95] * 1000)
    sink = Sink()
    monitor = Monitor(dataclasses.replace(SETTINGS, interval_s=0.02), lambda: [tmp_path], sink,
                      sampler=lambda: sample(next(values)), disk_free=lambda path: 5.0)
    monitor.start()
    try:
        alerts = sink.wait_for(3)
        assert [(a.kind, a.level) for a in alerts[:3]] == [("disk", "critical"), ("memory", "warning"),
                                                           ("memory", "critical")]
        assert monitor.critical and monitor.level == "critical"
        assert monitor.last_sample is not None and monitor.last_sample.used_percent == 95
    finally:
        started = time.monotonic()
        monitor.stop()
    assert time.monotonic() - started < 10   # not the 3600 s interval; wide for a loaded machine


def test_monitor_waits_on_an_event_so_stop_does_not_wait_for_the_interval() -> None:
    monitor = Monitor(dataclasses.replace(SETTINGS, interval_s=3600), lambda: [], Sink(),
                      sampler=lambda: sample(50))
    monitor.start()
    wait_until(lambda: monitor.last_sample is not None, 10, "the first sample (the loop is in its wait next)")
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 10   # not the 3600 s interval; wide for a loaded machine


def test_reconfigure_applies_at_once() -> None:
    sink = Sink()
    monitor = Monitor(dataclasses.replace(SETTINGS, interval_s=3600, warn_percent=90), lambda: [], sink,
                      sampler=lambda: sample(85))
    monitor.start()
    try:
        wait_until(lambda: monitor.last_sample is not None, 10, "the first sample")
        assert monitor.level == "ok" and sink.alerts == []
        monitor.reconfigure(dataclasses.replace(SETTINGS, interval_s=3600, warn_percent=80))
        assert sink.wait_for(1)[0].level == "warning"
    finally:
        monitor.stop()


def test_monitor_survives_a_failing_sampler_and_handler() -> None:
    calls = {"n": 0}

    def flaky() -> MemorySample:
        calls["n"] += 1
        if calls["n"] % 2:
            raise psutil.Error("transient")
        return sample(95)

    sink = Sink()

    def handler(alert: Alert) -> None:
        sink(alert)
        raise RuntimeError("broker gone")

    monitor = Monitor(dataclasses.replace(SETTINGS, interval_s=0.01, repeat_s=0.05), lambda: [], handler,
                      sampler=flaky)
    monitor.start()
    try:
        alerts = sink.wait_for(2)
        assert alerts[0].level == "critical" and alerts[1].repeat
    finally:
        monitor.stop()


def test_telemetry_figures(tmp_path: Path) -> None:
    collector = TelemetryCollector(paths=lambda: [tmp_path])
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn some CPU for cpu_percent to see
        pass
    figures = collector.collect({"uptime_s": 12.5, "jobs_done": 3})
    assert figures["uptime_s"] == 12.5 and figures["jobs_done"] == 3
    assert figures["cpu_percent"] > 0
    assert len(figures["load_avg"]) == 3
    assert 0 < figures["memory"]["used_percent"] <= 100 and figures["memory"]["available_mb"] > 0
    assert figures["agent_rss_mb"] > 10
    assert figures["disk_free_mb"][str(tmp_path)] > 0
    assert figures["temperature_c"] is None or -50 < figures["temperature_c"] < 150


def test_temperature_falls_back_to_the_thermal_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert TelemetryCollector(thermal_zone=zone).temperature() == 48.3
    assert TelemetryCollector(thermal_zone=tmp_path / "absent").temperature() is None
