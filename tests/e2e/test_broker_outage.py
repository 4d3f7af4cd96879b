"""Broker faults injected for real: a stopped broker while files are processed, and a restart that
lost every retained message. A real Mosquitto, the agent as a subprocess, and nothing mocked.

The figures each test prints (durations, duplicate counts) fill the table in docs/reliability.md.
"""

from __future__ import annotations

import os
import time

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.wait import ECHO_FILTER, all_delivered, broker_echo, wait_until
from tests.support.probe import Probe, retained
from tests.support.wavs import tone_wav
from tests.support.inbox import drop


OUTAGE_S = float(os.environ.get("FAULTS_OUTAGE_S", "30"))


def test_broker_down_30s_while_20_files_are_processed(tmp_path):
    """The full outage: transcripts and summaries of 20 files, all produced while the broker was
    down, arrive after it returns, in order, each exactly once."""
    broker = Broker(tmp_path / "pbroker", persistent=True).start()
    sub = Probe(broker.host, broker.port, protocol="3.1.1", client_id="outage-sub", persistent=True,
                subscribe=("voice/+/event/#", "voice/+/availability", ECHO_FILTER))
    agent = AgentProcess(tmp_path / "agent", broker.port)
    asker = None
    names = [f"f{i:02d}.wav" for i in range(20)]
    try:
        agent.start(sub)
        broker.stop()
        down_at = time.monotonic()
        for i, name in enumerate(names):
            drop(agent.inbox, name, tone_wav(0.2 + 0.01 * i))
            # each file processed before the next arrives: arrival order is job order
            wait_until(lambda: (agent.inbox / "processed" / f"{name}.json").exists(), 30, f"{name} processed")
        wait_until(lambda: len(list((agent.inbox / "processed").glob("*.wav.json"))) == len(names), 60,
                   "20 files processed while the broker is down")
        processed_in = time.monotonic() - down_at
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))   # pacing: the outage lasts OUTAGE_S
        broker.start()
        up_at = time.monotonic()
        sub.wait_for(f"{agent.root}/event/transcript", count=len(names), timeout=60, what="transcripts")
        sub.wait_for(f"{agent.root}/event/summary", count=len(names), timeout=30, what="summaries")
        delivered_in = time.monotonic() - up_at
        asker = Probe(broker.host, broker.port)
        all_delivered(asker, agent.root)   # nothing left in the outbox that could be sent again
        broker_echo(sub)                   # and all that was sent has reached the subscriber
        transcripts = [m.json for m in sub.on(f"{agent.root}/event/transcript")]
        summaries = [m.json for m in sub.on(f"{agent.root}/event/summary")]
        events = [(m.topic, m.payload) for m in sub.messages if "/event/" in m.topic]
        duplicates = len(events) - len(set(events))
        print(f"\noutage {OUTAGE_S:.0f}s: 20 files processed in {processed_in:.1f}s while down; "
              f"{len(transcripts)} transcripts + {len(summaries)} summaries delivered {delivered_in:.1f}s "
              f"after the broker returned; {len(events)} events, {duplicates} duplicates")
        assert [t["source"]["name"] for t in transcripts] == names          # in order, each once
        assert [s["source"]["name"] for s in summaries] == names
        assert [s["job_id"] for s in summaries] == [t["job_id"] for t in transcripts]
        assert all(s["text"] for s in summaries)
        assert duplicates == 0, [e for e in events if events.count(e) > 1][:4]
        jobs = [m.json for m in sub.on(f"{agent.root}/event/job")]
        assert sorted(j["job_id"] for j in jobs if j["state"] == "done") == sorted(t["job_id"] for t in transcripts)
    finally:
        agent.stop()
        sub.close()
        if asker is not None:
            asker.close()
        broker.stop()


def test_broker_restart_without_retained_messages_gets_them_back(tmp_path, broker, probe, make_agent):
    agent = make_agent().start(probe)
    agent.config_path.write_text("jobs: [this is not\n")   # a config alert to be kept retained
    probe.wait_for(f"{agent.root}/alert/config", lambda m: m.json["level"] == "error", what="config alert")
    assert retained(broker.host, broker.port, f"{agent.root}/alert/config") is not None
    broker.stop()     # persistence false: every retained message is gone
    time.sleep(1)     # pacing: an outage the agent notices
    broker.start()
    t0 = time.monotonic()
    facts = {}
    for topic in ("availability", "state", "config", "alert/config"):
        msg = wait_until(lambda: retained(broker.host, broker.port, f"{agent.root}/{topic}", timeout=0.5), 15,
                         f"retained {topic} after the broker restart")
        facts[topic] = msg
    elapsed = time.monotonic() - t0
    print(f"\nretained availability/state/config/alert back {elapsed:.1f}s after the broker restart")
    assert facts["availability"].text == "online"
    assert facts["state"].json["device_id"] == agent.device_id
    assert facts["config"].json["config"]["mqtt"]["password"] in (None, "***")
    assert facts["alert/config"].json["level"] == "error"
    assert elapsed < 30   # wide for a loaded machine; the figure printed above is the measurement
