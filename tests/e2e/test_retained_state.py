"""The retained state and config documents, with every secret hidden."""

from __future__ import annotations

from tests.support.probe import retained


SECRET = "s3cret-Pa55word"


def test_retained_state_and_config_hide_secrets(make_agent, broker, probe):
    agent = make_agent({"mqtt": {"username": "dev"}}, env={"VOICE_AGENT_MQTT_PASSWORD": SECRET}).start(probe)
    probe.wait_for(f"{agent.root}/config", what="config")
    probe.wait_for(f"{agent.root}/state", what="state")
    state = retained(broker.host, broker.port, f"{agent.root}/state").json   # what newcomers get
    config = retained(broker.host, broker.port, f"{agent.root}/config").json
    for key in ("device_id", "version", "started_at", "uptime_s", "paused", "jobs", "engines", "config_revision",
                "ts"):
        assert key in state, key
    assert state["jobs"] == {"running": 0, "limit": 1, "active": []}
    assert set(state["engines"]) == {"transcriber", "summarizer"}
    assert config["config"]["mqtt"]["password"] == "***"
    assert config["config"]["mqtt"]["username"] == "dev"
    for m in probe.messages:
        assert SECRET.encode() not in m.payload, m.topic
    assert SECRET not in agent.log()
