"""Unique by default: identical images get distinct device ids, and a device id that another
connected installation uses is refused before it takes anything over.

Two agents on this machine share its hostname, exactly like two Pis flashed from one image; each
gets its own fake machine id.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.settings import MACHINE_ID_ENV
from tests.support.agent import AgentProcess
from tests.support.machine_id import MACHINE_A, MACHINE_B, machine_id_file
from tests.support.wait import handled_before, wait_until


def unnamed_agent(workdir: Path, port: int, machine_id: Path) -> AgentProcess:
    """An agent whose config sets no device_id."""
    agent = AgentProcess(workdir, port, env={MACHINE_ID_ENV: str(machine_id)})
    agent.config.pop("device_id")
    agent.write_config(agent.config)
    return agent


def test_two_agents_from_one_image_get_different_ids(tmp_path, broker, probe) -> None:
    agents = [unnamed_agent(tmp_path / name, broker.port, machine_id_file(tmp_path / f"mid-{name}", value))
              for name, value in (("a", MACHINE_A), ("b", MACHINE_B))]
    try:
        for agent in agents:
            agent.start()
        online = probe.wait_for("voice/+/availability", lambda m: m.payload == b"online", count=2, timeout=30,
                                what="both agents online")
        roots = {m.topic.rsplit("/", 1)[0] for m in online}
        assert len(roots) == 2, roots
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).strip("-")[:57]
        ids = {root.split("/", 1)[1] for root in roots}
        assert all(i.startswith(host + "-") for i in ids), ids
        for agent in agents:
            wait_until(lambda: "device_id " in agent.log(), 10, "the device id in the log")
        logged = {line.split("device_id ", 1)[1].split()[0] for a in agents for line in a.log().splitlines()
                  if "device_id " in line and "topic root" in line}
        assert logged == ids
        for root in roots:   # each still connected and answering: neither knocked the other off
            handled_before(probe, root)
        assert all(a.alive() for a in agents), "neither knocked the other off"
    finally:
        for agent in agents:
            agent.stop()


def test_a_device_id_in_use_by_another_device_is_refused_without_takeover(tmp_path, broker, probe) -> None:
    first = AgentProcess(tmp_path / "first", broker.port, device_id="kitchen").start(probe)
    second = AgentProcess(tmp_path / "second", broker.port, device_id="kitchen")
    try:
        availability_before = len(probe.on("voice/kitchen/availability"))
        second.start(wait_online=False)
        assert second.proc.wait(timeout=20) == 78, second.log()[-2000:]
        assert "already used by another connected device" in second.log()
        handled_before(probe, first.root)   # still connected: a Last Will would have come before this answer
        assert first.alive()
        assert len(probe.on("voice/kitchen/availability")) == availability_before, \
            "the first device was never knocked off (no Last Will, no new birth)"
        assert first.log().count("mqtt: connected") == 1
    finally:
        second.stop()
        first.stop()


def test_the_same_device_restarting_after_a_power_cut_is_not_refused(tmp_path, broker, probe) -> None:
    """After a power cut the broker may still hold this device's `online` for 1.5 x keepalive: the
    restart must recognise it as its own (same install token in state_dir) and go ahead."""
    agent = AgentProcess(tmp_path / "dev", broker.port, device_id="hall").start(probe)
    birth = [m for m in probe.on("voice/hall/availability") if m.payload == b"online"][-1]
    install = dict(birth.properties.UserProperty)["install"]
    assert install == (tmp_path / "dev" / "state" / "install-id").read_text().strip()
    agent.kill9()
    probe.wait_for("voice/hall/availability", lambda m: m.payload == b"offline", timeout=10, what="Last Will")
    stale_online(broker.port, "voice/hall/availability", install)   # as if the broker had not noticed yet
    n = len([m for m in probe.on("voice/hall/availability") if m.payload == b"online"])
    try:
        agent.start(probe)   # waits for a new `online` from the restarted agent
        assert len([m for m in probe.on("voice/hall/availability") if m.payload == b"online"]) > n
        assert agent.alive()
        # Another installation sees the same stale `online` as a device in use.
        stale_online(broker.port, "voice/hall/availability", install)
        other = AgentProcess(tmp_path / "other", broker.port, device_id="hall")
        other.start(wait_online=False)
        assert other.proc.wait(timeout=20) == 78
    finally:
        agent.stop()


def stale_online(port: int, topic: str, install: str) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stale-writer", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("install", install)
    client.publish(topic, b"online", qos=1, retain=True, properties=props).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture(autouse=True)
def _no_real_machine_id(monkeypatch, tmp_path):
    """Agents in these tests never read the real /etc/machine-id."""
    monkeypatch.setenv(MACHINE_ID_ENV, str(tmp_path / "no-machine-id"))
