"""Engine health in process: consecutive engine failures, and when the summarizer is restarted."""

from __future__ import annotations

import types

import pytest

from agent.ops.monitor import Alert
from agent.ops.reactions import EngineHealth, summarizer_restart_due


@pytest.mark.parametrize("enabled, level, top_pid, server_pid, expected", [
    (True, "critical", 4242, 4242, True),
    (False, "critical", 4242, 4242, False),     # off by default
    (True, "warning", 4242, 4242, False),       # only while critical
    (True, "critical", 1111, 4242, False),      # someone else is the largest
    (True, "critical", 4242, None, False),      # no server (one-shot mode, other engine)
])
def test_summarizer_restart_decision(enabled: bool, level: str, top_pid: int, server_pid: int | None,
                                     expected: bool) -> None:
    data = {"top_process": {"pid": top_pid, "name": "llama-server", "rss_mb": 300.0}}
    assert summarizer_restart_due(enabled, "memory", level, data, server_pid) is expected
    assert not summarizer_restart_due(enabled, "disk", level, data, server_pid)


def test_the_summarizer_is_restarted_only_when_due() -> None:
    """The glue (agent.ops.reactions): the decision, then EngineSlot.restart() on engines.summarizer."""
    from agent.ops.reactions import AlertReactions
    restarted = []
    slot = types.SimpleNamespace(server_pid=4242, restart=lambda: restarted.append(True))

    def reactions(enabled: bool) -> AlertReactions:
        settings = types.SimpleNamespace(memory=types.SimpleNamespace(restart_summarizer_when_largest=enabled),
                                         jobs=types.SimpleNamespace(engine_alert_after=3))
        return AlertReactions(board=None, engines=types.SimpleNamespace(summarizer=slot), settings=settings)

    critical = Alert("memory", "critical", {"top_process": {"pid": 4242}}, repeat=True)
    reactions(False).restart_summarizer_if_due(critical)
    assert restarted == []
    reactions(True).restart_summarizer_if_due(critical)
    assert restarted == [True]


def test_engine_health_counts_consecutive_engine_failures_only() -> None:
    health = EngineHealth(2)
    engine = {"state": "failed", "error": {"code": "engine_error", "message": "exit 1"}, "job_id": "j"}
    corrupt = {"state": "failed", "error": {"code": "corrupt", "message": "not audio"}}
    assert health.observe({"state": "running"}) is None
    assert health.observe(engine) is None
    assert health.observe(corrupt) is None, "bad audio is not the engine's fault"
    action, data = health.observe(engine)
    assert action == "raise" and data["failures"] == 2 and data["threshold"] == 2
    assert data["error"]["code"] == "engine_error"
    assert health.observe(engine) is None, "raised once, not per failure"
    action, data = health.observe({"state": "done", "job_id": "ok"})
    assert action == "clear" and data["failures"] == 3
    assert health.observe({"state": "done"}) is None
    assert health.observe(engine) is None, "the count starts again after a success"
