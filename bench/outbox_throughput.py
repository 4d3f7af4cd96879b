"""7. Outbox: events persisted and published per second, and the drain after a broker outage.

In-process: agent.mqtt.outbox.Outbox + agent.mqtt.publisher.Publisher + agent.mqtt.link.MqttLink against the
bench's Mosquitto, as the app wires them. A subscriber counts what arrives.

- persisted/s: `Publisher.emit` calls per second (SQLite insert + wake), the caller's cost;
- published/s: emitted and acknowledged by the broker (rows deleted), end to end;
- outage: the broker is stopped, N events are emitted into the outbox, the broker is started
  again on the same port; time until every row is acknowledged, split into the reconnect wait
  (paho's backoff, at least reconnect_min_s) and the drain itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.settings import MQTTSettings
from agent.mqtt.topics import Topics
from bench.common import Broker, Dist, Results, Watcher, ratios

SECTION = "7 outbox"
BODY = {"job_id": "20250101T000000-abcdef12", "state": "done", "source": {"kind": "inbox", "name": "clip0001.wav"},
        "audio_s": 0.5, "timings_ms": {"decode": 0.4, "transcribe": 0.3, "summarize": 0.1, "total": 1.2}}


class Rig:
    def __init__(self, work: Path, port: int, name: str) -> None:
        self.topics = Topics("voice", f"bench-{name}")
        self.outbox = Outbox(work / f"{name}.sqlite3", max_messages=1_000_000, max_bytes=1_000_000_000)
        self.publisher = Publisher(self.outbox, self.topics.device_id, on_store_error=lambda e: None)
        settings = MQTTSettings(host="127.0.0.1", port=port, reconnect_min_s=1, reconnect_max_s=2)
        self.link = MqttLink(settings, self.topics, host="127.0.0.1", port=port,
                             on_connect=self.publisher.wake, on_publish=self.publisher.on_puback)
        self.publisher.start()
        self.publisher.attach(self.link)
        self.link.start()
        if not self.link.connected.wait(10):
            raise RuntimeError("outbox rig did not connect")

    def wait_empty(self, timeout: float) -> float:
        """Seconds until the outbox is empty (every row acknowledged)."""
        t0 = time.monotonic()
        while self.outbox.count:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"outbox still holds {self.outbox.count} rows")
            time.sleep(0.002)
        return time.monotonic()

    def close(self) -> None:
        self.publisher.stop()
        self.link.stop()
        self.outbox.close()


def throughput(rig: Rig, n: int) -> tuple[float, float]:
    topic = rig.topics.event("job")
    t0 = time.monotonic()
    for i in range(n):
        rig.publisher.emit(topic, BODY)
    t_put = time.monotonic()
    t_end = rig.wait_empty(60)
    return n / (t_put - t0), n / (t_end - t0)


def run(res: Results, work: Path, broker: Broker, quick: bool) -> dict:
    n = 2000 if quick else 10000
    rounds = 3 if quick else 5
    rig = Rig(work, broker.port, "b7")
    sub = Watcher(broker.port, subscribe=(f"voice/{rig.topics.device_id}/event/#",), keep=lambda t: False)
    raw: dict = {}
    try:
        throughput(rig, 200)   # warm-up
        put_rates, pub_rates = [], []
        for _ in range(rounds):
            a, b = throughput(rig, n)
            put_rates.append(a)
            pub_rates.append(b)
        res.add(SECTION, f"events persisted/s (emit, {n} per round)", Dist(put_rates).spread("{:.0f}"))
        res.add(SECTION, "events persisted + published + acknowledged/s", Dist(pub_rates).spread("{:.0f}"))
        res.add(SECTION, "published / persisted rate (paired ratio)", ratios(pub_rates, put_rates).spread("{:.2f}"))

        # broker outage
        m = 1000 if quick else 5000
        waits, drains, rates = [], [], []
        for _ in range(2 if quick else 3):
            broker.stop()
            deadline = time.monotonic() + 10
            while rig.link.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            topic = rig.topics.event("job")
            for i in range(m):
                rig.publisher.emit(topic, BODY)
            t_start = time.monotonic()
            broker.start()
            if not rig.link.connected.wait(30):
                raise RuntimeError("the rig did not reconnect within 30 s")
            t_conn = time.monotonic()
            t_end = rig.wait_empty(120)
            waits.append(t_conn - t_start)
            drains.append(t_end - t_conn)
            rates.append(m / (t_end - t_conn))
        # the bench subscriber reconnects by itself; give it a moment before anything else uses it
        res.add(SECTION, f"outage: broker back -> reconnected ({m} events held)", Dist(waits).spread("{:.2f}") + " s",
                note="paho reconnect backoff (reconnect_min_s=1)")
        res.add(SECTION, "outage: reconnected -> all acknowledged", Dist(drains).spread("{:.3f}") + " s")
        res.add(SECTION, "outage: drain rate", Dist(rates).spread("{:.0f}") + " events/s")
        raw = {"put_per_s": put_rates, "pub_per_s": pub_rates, "outage_wait_s": waits, "drain_s": drains,
               "drain_per_s": rates}
    finally:
        sub.close()
        rig.close()
    res.raw["outbox"] = raw
    return raw
