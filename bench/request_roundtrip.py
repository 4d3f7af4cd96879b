"""3. Request round trip: `ping` and `state` over loopback, MQTT 5 and 3.1.1.

One agent, two requesters (one per protocol version) with TCP_NODELAY on their sockets; the
broker has `set_tcp_nodelay true`. Requests go one at a time, the four kinds interleaved
(ping v5, state v5, ping 3.1.1, state 3.1.1, then the next round in reverse order), so all four
see the same background load. Time from just before PUBLISH to the answer's arrival.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from bench.common import Dist, Results, Watcher, agent_config, start_agent

SECTION = "3 round trip"


class Requester:
    def __init__(self, port: int, root: str, protocol: str) -> None:
        self.root = root
        self._got = threading.Event()
        self._want: str | None = None
        self.t_recv = 0.0
        self.w = Watcher(port, subscribe=(f"{root}/response/#",), protocol=protocol, keep=lambda t: False)
        self.w.hooks.append((f"{root}/response/#", self._on_answer))

    def _on_answer(self, now: float, topic: str, payload: bytes) -> None:
        if self._want is not None and self._want.encode() in payload:
            try:
                if json.loads(payload).get("transaction") != self._want:
                    return
            except ValueError:
                return
            self.t_recv = now
            self._got.set()

    def request(self, command: str) -> float:
        tx = uuid.uuid4().hex
        self._want = tx
        self._got.clear()
        body = json.dumps({"transaction": tx}).encode()
        t0 = time.monotonic()
        self.w.publish(f"{self.root}/request/{command}", body, qos=1)
        if not self._got.wait(10):
            raise RuntimeError(f"no answer to {command} within 10 s")
        return (self.t_recv - t0) * 1000

    def close(self) -> None:
        self.w.close()


def run(res: Results, work: Path, port: int, quick: bool) -> dict:
    n = 150 if quick else 1000
    agent, watcher, _ = start_agent(work / "b3", port, agent_config(inbox={"enabled": False}))
    reqs = {"5": Requester(port, agent.root, "5"), "3.1.1": Requester(port, agent.root, "3.1.1")}
    kinds = [(p, c) for p in ("5", "3.1.1") for c in ("ping", "state")]
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in kinds}
    try:
        for p, c in kinds:   # warm-up: first use of each path (imports, caches)
            for _ in range(5):
                reqs[p].request(c)
        for i in range(n):
            for p, c in (kinds if i % 2 == 0 else kinds[::-1]):
                samples[(p, c)].append(reqs[p].request(c))
    finally:
        for r in reqs.values():
            r.close()
        watcher.close()
        agent.stop()
    raw = {}
    for (p, c), xs in samples.items():
        d = Dist(xs)
        p50, p99, mx = d.median, d.p(99), d.hi
        res.add(SECTION, f"{c} MQTT {p}: p50 / p99 / max",
                f"{p50:.2f} / {p99:.2f} / {mx:.1f} ms (n={d.n})", "p50 <= 5, p99 <= 20 ms",
                p50 <= 5 and p99 <= 20)
        raw[f"{c}-{p}"] = xs
    v5 = Dist([a / b for a, b in zip(samples[("5", "ping")], samples[("3.1.1", "ping")])])
    res.add(SECTION, "ping MQTT 5 / 3.1.1 (paired ratio)", v5.spread("{:.2f}"))
    st = Dist([a / b for a, b in zip(samples[("5", "state")], samples[("5", "ping")])])
    res.add(SECTION, "state / ping, MQTT 5 (paired ratio)", st.spread("{:.2f}"))
    res.raw["roundtrip"] = raw
    return raw
