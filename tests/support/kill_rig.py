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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.probe import Probe
from tests.support.wait import ECHO_FILTER, broker_echo
from tests.support.wavs import tone_wav


@dataclass
class KillRig:
    seed: int
    rng: random.Random
    sub: Probe              # persistent MQTT 3.1.1 session: it misses nothing while the agent is down
    agent: AgentProcess     # not started; the test starts and kills it
    staging: Path           # the WAVs, beside the inbox: os.rename moves one in atomically
    names: list[str]

    def mark(self) -> None:
        """Every message the broker accepted before now has reached `sub` (tests/support/wait.py)."""
        broker_echo(self.sub)

    def close(self) -> None:
        self.agent.stop()
        self.sub.close()


def make_kill_rig(tmp_path: Path, broker: Broker, *, prefix: str, count: int, subscribe: tuple[str, ...],
                  tone_s: Callable[[int], float]) -> KillRig:
    """`count` WAVs named `<prefix>NNN.wav` (file i lasts `tone_s(i)` s) staged, the inbox made."""
    seed = int(os.environ.get("FAULTS_SEED", random.randrange(1 << 30)))
    sub = Probe(broker.host, broker.port, protocol="3.1.1", client_id=f"{prefix}-kill-sub", persistent=True,
                subscribe=(*subscribe, ECHO_FILTER))
    agent = AgentProcess(tmp_path / "agent", broker.port, {"log_level": "INFO", "inbox": {"settle_ms": 200}})
    staging = tmp_path / "staging"
    staging.mkdir()
    names = [f"{prefix}{i:03d}.wav" for i in range(count)]
    for i, name in enumerate(names):
        (staging / name).write_bytes(tone_wav(tone_s(i)))
    agent.inbox.mkdir(parents=True)
    return KillRig(seed, random.Random(seed), sub, agent, staging, names)
