"""One oversized message must not exhaust the agent's memory.

The agent asks the broker (MQTT 5 Maximum Packet Size in CONNECT, from `mqtt.max_payload_bytes`)
never to send it a larger packet, so an 80 MB publish on its request topic is dropped at the
broker instead of being read whole by paho before the size check. A message only a little over
the limit still arrives and is answered `payload_too_large`; a fleet job is size-checked before
its JSON is parsed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.probe import Probe
from tests.support.wait import wait_until

MB = 1024 * 1024


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), which a freed buffer does not hide."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / MB


def test_80mb_publish_never_reaches_the_agent_and_it_keeps_answering(make_agent, probe, broker):
    agent = make_agent({"mqtt": {"max_payload_bytes": 1 * MB}}).start(probe)
    sender = Probe(broker.host, broker.port, subscribe=(f"{agent.root}/response/#",))
    try:
        assert sender.request(agent.root, "ping")["data"] == {"pong": True}
        peak_before = peak_rss_mb(agent.proc.pid)
        rss_before = psutil.Process(agent.proc.pid).memory_info().rss / MB

        sender.publish(f"{agent.root}/request/summarize", b'{"text": "' + b"a" * (80 * MB) + b'"}')
        # The broker handles one client's packets in order: once this ping is answered, the big
        # message before it was either delivered to the agent or dropped for it.
        assert sender.request(agent.root, "ping", timeout=60)["data"] == {"pong": True}
        peak_after = peak_rss_mb(agent.proc.pid)
        rss_after = psutil.Process(agent.proc.pid).memory_info().rss / MB
        print(f"\n80 MB publish: agent peak RSS {peak_before:.1f} -> {peak_after:.1f} MB, "
              f"RSS {rss_before:.1f} -> {rss_after:.1f} MB")
        assert peak_after - peak_before < 20, (peak_before, peak_after)
        too_large = [m for m in sender.on(f"{agent.root}/response/summarize")]
        assert too_large == [], "the 80 MB message was delivered to the agent"

        # A little over the limit (within the packet headroom): delivered and answered, coded.
        answer = sender.request(agent.root, "summarize", b'{"text": "' + b"b" * (MB + 10) + b'"}')
        assert answer["status"] == "error" and answer["error"]["code"] == "payload_too_large", answer
        assert sender.request(agent.root, "summarize", {"text": "The device still works after all that."}
                              )["status"] == "ok"
        assert agent.alive()
    finally:
        sender.close()


def test_an_oversized_fleet_job_is_refused_before_its_json_is_parsed(make_agent, probe, broker):
    """Not JSON and too large: the size is the answer (`payload_too_large`), not `bad_request`:
    the check came first, before a byte was parsed."""
    agent = make_agent({"mqtt": {"max_payload_bytes": 65_536}, "fleet": {"worker": True}}).start(probe)
    wait_until(lambda: probe.request(agent.root, "stats")["data"]["fleet"]["subscribed"], timeout=20,
               what="joined the fleet group")
    reply = f"voice/results/{uuid.uuid4().hex[:8]}"
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply
    props.CorrelationData = b"big-1"
    probe.publish("voice/jobs/transcribe", b"{" + b"x" * 100_000, properties=props)
    [answer] = probe.wait_for(reply, timeout=20, what="the refusal of an oversized job")
    assert answer.json["status"] == "error" and answer.json["error"]["code"] == "payload_too_large", answer.json
    assert answer.properties.CorrelationData == b"big-1"
    assert probe.request(agent.root, "ping")["data"] == {"pong": True}
