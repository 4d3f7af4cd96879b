"""agent/ops/health.py: each check's reason and the worst one as the status (the e2e test,
tests/e2e/test_health.py, drives memory and the broker round trip through a running agent)."""

from __future__ import annotations

from types import SimpleNamespace

from agent.ops.health import Health
from agent.settings import Settings

READY = {"name": "bench_metadata", "ready": True, "error": None}


def health(alerts=None, engines=None, count=0, size=0, memory="ok", clock=lambda: 0.0) -> Health:
    outbox = SimpleNamespace(count=count, size_bytes=size, max_messages=1000, max_bytes=1_000_000)
    return Health(Settings(), SimpleNamespace(health="voice/x/health", device_id="x"), alerts=alerts or {}, outbox=outbox, monitor=SimpleNamespace(level=memory),
                  engines=lambda: engines or {"transcriber": READY, "summarizer": READY}, clock=clock)


def statuses(h: Health) -> tuple[str, dict[str, str]]:
    body = h.evaluate()
    return body["status"], {r["check"]: r["status"] for r in body["reasons"]}


def test_all_well_is_ok_with_no_reasons() -> None:
    assert statuses(health()) == ("ok", {})


def test_alerts_by_level() -> None:
    assert statuses(health(alerts={"disk": {"level": "critical"}, "capture": {"level": "warning"}})) == \
        ("failing", {"alert:disk": "failing", "alert:capture": "degraded"})
    assert statuses(health(alerts={"config": {"level": "error"}}))[0] == "failing"


def test_engine_loading_degrades_and_a_failed_one_fails() -> None:
    loading = {"transcriber": {"name": "whisper_cpp", "ready": False, "error": None}, "summarizer": READY}
    assert statuses(health(engines=loading)) == ("degraded", {"engine:transcriber": "degraded"})
    failed = {"transcriber": READY, "summarizer": {"name": "llama_server", "ready": False, "error": "no model"}}
    body = health(engines=failed).evaluate()
    assert body["status"] == "failing" and "no model" in body["reasons"][0]["detail"]


def test_outbox_backlog_against_either_bound() -> None:
    assert statuses(health(count=499)) == ("ok", {})
    assert statuses(health(count=500)) == ("degraded", {"outbox": "degraded"})   # outbox_degraded_percent 50
    assert statuses(health(size=900_000)) == ("failing", {"outbox": "failing"})   # 90 % of max_bytes


def test_a_publish_without_puback_past_the_limit_is_a_slow_broker() -> None:
    now = [0.0]
    h = health(clock=lambda: now[0])
    link = SimpleNamespace(connected=SimpleNamespace(is_set=lambda: True),
                           publish=lambda *a, **k: SimpleNamespace(mid=7))
    h.attach(link)
    h.tick()
    now[0] = 1.0
    h.on_puback(7)
    assert h.rtt_ms == 1000.0 and statuses(h) == ("ok", {})
    now[0] = 61.0   # health.interval_s 60: published again, a new probe
    h.tick()
    now[0] = 64.0   # 3 s without its PUBACK (broker_rtt_degraded_ms 2000)
    assert statuses(h) == ("degraded", {"broker": "degraded"})
