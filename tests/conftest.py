"""Fixtures: a real Mosquitto on a free loopback port, an MQTT probe, agents as subprocesses."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.kill_rig import KillRig, make_kill_rig
from tests.support.lifecycle import NotifySocket
from tests.support.probe import Probe


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def probe(broker: Broker) -> Iterator[Probe]:
    p = Probe(broker.host, broker.port)
    yield p
    p.close()


@pytest.fixture
def make_agent(tmp_path: Path, broker: Broker) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def make(config: dict | None = None, *, name: str = "agent", **kwargs) -> AgentProcess:
        a = AgentProcess(tmp_path / name, broker.port, config, **kwargs)
        agents.append(a)
        return a

    yield make
    for a in agents:
        a.stop()


@pytest.fixture
def agent(make_agent, probe) -> AgentProcess:
    """One running agent with the model-free test engine, online on the test broker."""
    return make_agent().start(probe)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET (tests/support/lifecycle.py)."""
    n = NotifySocket()
    yield n
    n.close()


@pytest.fixture
def kill_rig(tmp_path: Path, broker: Broker) -> Iterator[Callable[..., KillRig]]:
    """Builds the kill -9 / power-loss setup (tests/support/kill_rig.py); its agent and subscriber
    are stopped afterwards, even when the test fails."""
    made: list[KillRig] = []

    def make(**options) -> KillRig:
        made.append(make_kill_rig(tmp_path, broker, **options))
        return made[-1]

    yield make
    for rig in made:
        rig.close()
