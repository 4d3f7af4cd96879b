"""Readiness and the job watchdog in process: ready waits for MQTT and settled engines; a job's
watchdog allowance scales with small timeouts.
"""

from __future__ import annotations

from agent.ops import readiness as operations
from agent.ops.readiness import engines_settled, ready_due


def test_ready_waits_for_mqtt_and_settled_engines() -> None:
    loading = {"transcriber": {"ready": False, "error": None}, "summarizer": {"ready": True, "error": None}}
    failed = {"transcriber": {"ready": False, "error": "model not found"}, "summarizer": {"ready": True, "error": None}}
    loaded = {"transcriber": {"ready": True, "error": None}, "summarizer": {"ready": True, "error": None}}
    assert not engines_settled(loading)
    assert engines_settled(failed), "a failed engine is settled: it must not hold READY back forever"
    assert not ready_due(False, loaded, waited_s=1)
    assert not ready_due(True, loading, waited_s=1)
    assert ready_due(True, failed, waited_s=1) and ready_due(True, loaded, waited_s=1)
    assert ready_due(False, loading, waited_s=operations.READY_DEADLINE_S), "never longer than the deadline"
