"""The shared setup of the kill -9 and power-loss tests (tests/e2e/test_kill9_recovery.py,
test_power_loss_durability.py): an agent that is SIGKILLed again and again while it works on a
stack of files, and a subscriber that outlives every one of its deaths.

Why shared: both tests prove a property that holds across deaths (nothing lost, nothing published
twice unmarked, no record without its events); they must stage the same things the same way, and
report the seed so a failure can be replayed (`FAULTS_SEED=<seed>`).
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.probe import Probe
from tests.support.wavs import tone_wav


MARK_TOPIC = "kill-rig/mark"


@dataclass
class KillRig:
    seed: int
    rng: random.Random
    sub: Probe              # persistent MQTT 3.1.1 session: it misses nothing while the agent is down
    agent: AgentProcess     # not started; the test starts and kills it
    staging: Path           # the WAVs, beside the inbox: os.rename moves one in atomically
    names: list[str]

    def mark(self, timeout: float = 20) -> None:
        """A positive marker that every message the broker had accepted before now has reached `sub`:
        `sub` publishes to itself and waits for the echo. Mosquitto handles one message at a time
        and queues it to the subscribers before it acknowledges it, so an event it acknowledged
        earlier is queued to `sub` before the echo. Replaces "sleep until it would have arrived"."""
        topic = f"{MARK_TOPIC}/{uuid.uuid4().hex}"
        self.sub.publish(topic, b"mark")
        self.sub.wait_for(topic, timeout=timeout, what="the subscriber's own marker back from the broker")

    def close(self) -> None:
        self.agent.stop()
        self.sub.close()


def make_kill_rig(tmp_path: Path, broker: Broker, *, prefix: str, count: int, subscribe: tuple[str, ...],
                  tone_s: Callable[[int], float]) -> KillRig:
    """`count` WAVs named `<prefix>NNN.wav` (file i lasts `tone_s(i)` s) staged, the inbox made."""
    seed = int(os.environ.get("FAULTS_SEED", random.randrange(1 << 30)))
    sub = Probe(broker.host, broker.port, protocol="3.1.1", client_id=f"{prefix}-kill-sub", persistent=True,
                subscribe=(*subscribe, f"{MARK_TOPIC}/#"))
    agent = AgentProcess(tmp_path / "agent", broker.port, {"log_level": "INFO", "inbox": {"settle_ms": 200}})
    staging = tmp_path / "staging"
    staging.mkdir()
    names = [f"{prefix}{i:03d}.wav" for i in range(count)]
    for i, name in enumerate(names):
        (staging / name).write_bytes(tone_wav(tone_s(i)))
    agent.inbox.mkdir(parents=True)
    return KillRig(seed, random.Random(seed), sub, agent, staging, names)
