"""A request on the fleet-wide topic is answered by every device."""

from __future__ import annotations


def test_fleet_wide_request_answered_by_every_device(make_agent, probe):
    a = make_agent(name="a", device_id="dev-a").start(probe)
    b = make_agent(name="b", device_id="dev-b").start(probe)
    probe.publish("voice/all/request/ping", {"transaction": "fleet-1"})
    for agent in (a, b):
        m = probe.wait_for(f"{agent.root}/response/ping", what=f"{agent.device_id} answer")[0].json
        assert m["transaction"] == "fleet-1" and m["device_id"] == agent.device_id
