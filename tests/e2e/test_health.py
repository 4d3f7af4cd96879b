"""The retained `<root>/health` (agent/ops/health.py) against a real Mosquitto and real memory figures.

ok with no reasons and a broker round trip once one health publish was acknowledged; degraded
with the memory reasons when the warning threshold is set below what this machine uses, failing
when the critical one is too; ok again after config/reset. Every change is published at once
(the interval is 60 s, the waits are much shorter), retained, with a timestamp.
"""

from __future__ import annotations

import json

from tests.support.probe import Probe


def health(probe: Probe, root: str, pred, what: str) -> dict:
    return probe.wait_for(f"{root}/health", lambda m: pred(m.json), timeout=20, what=what)[-1].json


def test_health_is_retained_and_follows_memory_and_the_broker(make_agent, probe, broker) -> None:
    agent = make_agent({"memory": {"interval_s": 0.2}, "health": {"interval_s": 5}}).start(probe)
    root = agent.root
    ok = health(probe, root, lambda h: h["status"] == "ok", "health ok")
    assert ok["reasons"] == [] and ok["ts"] and ok["device_id"] == agent.device_id
    timed = health(probe, root, lambda h: h["broker_rtt_ms"] is not None, "a measured broker round trip")
    assert 0 < timed["broker_rtt_ms"] < 2000

    late = Probe(broker.host, broker.port, subscribe=(f"{root}/health",))
    try:
        retained = late.wait_for(f"{root}/health", what="retained health for a late subscriber")[0]
        assert retained.retain and retained.json["status"] == "ok"
    finally:
        late.close()

    probe.client.publish(f"{root}/request/config/set",
                         json.dumps({"config": {"memory": {"warn_percent": 1, "critical_percent": 99}}}), qos=1)
    degraded = health(probe, root, lambda h: h["status"] == "degraded", "degraded by the memory warning")
    checks = {r["check"]: r["status"] for r in degraded["reasons"]}
    assert checks.get("memory") == "degraded" and checks.get("alert:memory") == "degraded", degraded
    assert degraded["memory_level"] == "warning"

    probe.client.publish(f"{root}/request/config/set",
                         json.dumps({"config": {"memory": {"critical_percent": 2}}}), qos=1)
    failing = health(probe, root, lambda h: h["status"] == "failing", "failing at critical memory")
    assert {"check": "memory", "status": "failing", "detail": "memory level critical"} in failing["reasons"]

    probe.client.publish(f"{root}/request/config/reset", "{}", qos=1)
    health(probe, root, lambda h: h["status"] == "ok" and h["reasons"] == [], "ok again after config/reset")
