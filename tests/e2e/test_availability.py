"""Availability: online, then offline by the last will or on a clean shutdown (exit code 0)."""

from __future__ import annotations

from tests.support.probe import Probe


def test_availability_online_then_offline_by_last_will(make_agent, broker, probe):
    agent = make_agent().start(probe)
    late = Probe(broker.host, broker.port, subscribe=(f"{agent.root}/availability",))
    try:
        late.wait_for(f"{agent.root}/availability", lambda m: m.retain and m.text == "online", what="retained online")
    finally:
        late.close()
    agent.kill9()
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", what="Last Will offline")


def test_clean_shutdown_publishes_offline_and_exits_zero(agent, probe):
    assert agent.terminate() == 0
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", what="offline on SIGTERM")
