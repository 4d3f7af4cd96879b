"""Events produced while the broker is down arrive after it comes back, in order, exactly once."""

from __future__ import annotations

import os
import time

from tests.support.broker import Broker
from tests.support.probe import Probe
from tests.support.wait import ECHO_FILTER, all_delivered, broker_echo, wait_until


def test_events_during_broker_outage_arrive_in_order_exactly_once(tmp_path):
    """A persistent-session subscriber and a broker that keeps sessions across its restart:
    every event produced while the broker was down arrives after it returns, in order, once each."""
    from tests.support.agent import AgentProcess
    broker = Broker(tmp_path / "pbroker", persistent=True).start()
    sub = Probe(broker.host, broker.port, protocol="3.1.1", client_id="persistent-sub", persistent=True,
                subscribe=("voice/+/event/#", "voice/+/availability", ECHO_FILTER))
    agent = AgentProcess(tmp_path / "outage-agent", broker.port)
    asker = None
    try:
        agent.start(sub)
        broker.stop()
        names = [f"f{i:02d}.wav" for i in range(20)]
        _drop_wavs(agent.inbox, names)
        deadline = time.monotonic() + 60
        while len(list((agent.inbox / "processed").glob("*.wav.json"))) < len(names):
            assert time.monotonic() < deadline, "files not processed while the broker was down"
            time.sleep(0.2)
        broker.start()
        sub.wait_for(f"{agent.root}/event/transcript", count=len(names), timeout=60,
                     what="transcripts after the outage")
        asker = Probe(broker.host, broker.port)
        all_delivered(asker, agent.root)   # nothing left in the outbox that could be sent again
        broker_echo(sub)                   # and all that was sent has reached the subscriber
        msgs = sub.on(f"{agent.root}/event/transcript")
        job_ids = [m.json["job_id"] for m in msgs]
        assert len(job_ids) == len(set(job_ids)) == len(names), "duplicates or losses"
        assert [m.json["source"]["name"] for m in msgs] == names   # in order
        events = [(m.topic, m.payload) for m in sub.messages if "/event/" in m.topic]
        assert len(events) == len(set(events)), "an event arrived twice"
    finally:
        agent.stop()
        sub.close()
        if asker is not None:
            asker.close()
        broker.stop()


def _drop_wavs(inbox, names):
    from tests.support.wavs import tone_wav
    inbox.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        tmp = inbox / f".{name}.part"
        tmp.write_bytes(tone_wav(0.2 + 0.01 * i))
        os.rename(tmp, inbox / name)
        # each file processed before the next arrives: arrival order is job order
        wait_until(lambda: (inbox / "processed" / f"{name}.json").exists(), 30, f"{name} processed")
