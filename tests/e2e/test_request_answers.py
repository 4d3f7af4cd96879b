"""Every command answers, with the caller's correlation data; bad requests get typed errors and the
agent keeps serving. Observed only from outside: the agent as a subprocess on a real Mosquitto.
"""

from __future__ import annotations

import pytest

from tests.support.probe import Probe


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_command_answers(agent, broker, protocol):
    client = Probe(broker.host, broker.port, protocol=protocol)
    try:
        rt = f"voice/results/{protocol}/x" if protocol == "5" else None
        for command in ("ping", "state", "stats", "config/get", "pause", "resume"):
            answer = client.request(agent.root, command, {}, response_topic=rt)
            assert answer["status"] == "ok", (command, answer)
            assert answer["device_id"] == agent.device_id and "ts" in answer
        assert client.request(agent.root, "ping", response_topic=rt)["data"] == {"pong": True}
        if protocol == "5":
            m = client.on(rt)[-1]
            assert m.properties.CorrelationData   # echoed for the requester to match
        stats = client.request(agent.root, "stats")["data"]
        for key in ("jobs", "requests", "outbox", "caches", "inbox", "agent_rss_mb"):
            assert key in stats, key
    finally:
        client.close()


def test_correlation_data_is_echoed(agent, probe):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "voice/results/my-inbox"
    props.CorrelationData = b"corr-42"
    probe.publish(f"{agent.root}/request/ping", {}, properties=props)
    m = probe.wait_for("voice/results/my-inbox", what="answer on the Response Topic")[0]
    assert m.properties.CorrelationData == b"corr-42"
    assert m.json["status"] == "ok"


@pytest.mark.parametrize("payload, code", [
    (b"{not json", "bad_request"),
    (b"\xff\xfe\x00garbage", "bad_request"),
    (b"[1, 2, 3]", "bad_request"),
    (b'{"transaction": 5}', "bad_request"),
    (b"[" * 100000 + b"]" * 100000, "bad_request"),
])
def test_bad_requests_get_errors_and_agent_keeps_serving(agent, probe, payload, code):
    probe.publish(f"{agent.root}/request/ping", payload)
    answer = probe.wait_for(f"{agent.root}/response/ping", lambda m: m.json["status"] == "error",
                            what="error answer")[0].json
    assert answer["error"]["code"] == code
    assert "Traceback" not in answer["error"]["message"]
    assert probe.request(agent.root, "ping")["status"] == "ok"


def test_wrong_type_names_the_field(agent, probe):
    answer = probe.request(agent.root, "config/set", {"config": "nope"})
    assert answer["error"]["code"] == "bad_request"
    assert "config" in answer["error"]["message"]
    assert probe.request(agent.root, "ping", {"extra": 1})["error"]["code"] == "bad_request"


def test_unknown_command(agent, probe):
    answer = probe.request(agent.root, "make/coffee")
    assert answer["status"] == "error" and answer["error"]["code"] == "unknown_command"


def test_oversized_payload(make_agent, probe):
    agent = make_agent({"mqtt": {"max_payload_bytes": 2048}}).start(probe)
    probe.publish(f"{agent.root}/request/ping", {"pad": "x" * 5000, "transaction": "big"})
    answer = probe.wait_for(f"{agent.root}/response/ping", what="an error answer")[0].json
    assert answer["error"]["code"] == "payload_too_large"
    assert answer["transaction"] is None   # an oversized payload is not parsed
    assert probe.request(agent.root, "ping")["status"] == "ok"
