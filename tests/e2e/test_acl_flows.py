"""The shipped ACL works with the shipped features: a broker configured by the `mosquitto_broker`
role (per-device users, a dashboard, Home Assistant's own user, a read-only viewer), two agents
with fleet jobs and Home Assistant discovery on, all through that ACL on a live Mosquitto.

What must get through: fleet results to the sender's `reply_to` under `<prefix>/results/`,
Home Assistant's `homeassistant/status` birth message to every device (which then republishes
its discovery), requests from Home Assistant's buttons, and every device's topics to the viewer.
What must not: a device publishing into another device's root or sending it requests.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import uuid
from pathlib import Path


from tests.support.agent import AgentProcess
from tests.support.broker import free_port, mosquitto_binary
from tests.support.probe import Probe
from tests.support.wait import handled_before
from tests.support.wavs import tone_wav
from tests.support.ansible import current_user_group, local_broker_inventory, local_broker_vars, recap, run_playbook

DEVICES = {"pi-a": "pw-a", "pi-b": "pw-b"}


def start_broker(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    root, inventory = local_broker_inventory(tmp_path)
    user, _ = current_user_group()
    port = free_port()
    result = run_playbook(tmp_path, inventory, {
        **local_broker_vars(root, port),
        "mosquitto_broker_extra_config": ["persistence false", "set_tcp_nodelay true"],
        "mosquitto_broker_devices": [{"device_id": d, "password": p} for d, p in DEVICES.items()],
        "mosquitto_broker_dashboard_password": "dash",
        "mosquitto_broker_homeassistant": True,
        "mosquitto_broker_homeassistant_password": "ha-pw",
        "mosquitto_broker_fleet_workers": True,
        "mosquitto_broker_readers": [{"username": "viewer", "password": "view-pw"}],
    })
    assert recap(result)["failed"] == 0, result.stdout[-3000:]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {user}\ninclude_dir {root}/etc/mosquitto/conf.d\n")
    log = open(tmp_path / "mosquitto.log", "wb")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
            time.sleep(0.05)


def test_fleet_home_assistant_and_viewers_work_through_the_shipped_acl(tmp_path: Path) -> None:
    broker, port = start_broker(tmp_path)
    probes: list[Probe] = []
    agents: list[AgentProcess] = []
    try:
        viewer = Probe("127.0.0.1", port, subscribe=("voice/#",), username="viewer", password="view-pw")
        dashboard = Probe("127.0.0.1", port, subscribe=("voice/#",), username="dashboard",
                          password="dash")
        ha = Probe("127.0.0.1", port, subscribe=("homeassistant/#", "voice/#"), username="homeassistant",
                   password="ha-pw")
        probes += [viewer, dashboard, ha]
        for device, password in DEVICES.items():
            agent = AgentProcess(tmp_path / device, port, {
                "mqtt": {"username": device},
                "fleet": {"worker": True},
                "homeassistant": {"enabled": True},
                "inbox": {"enabled": False},
            }, device_id=device, env={"VOICE_AGENT_MQTT_PASSWORD": password})
            agents.append(agent.start(viewer))

        # Every device's retained facts reach the read-only viewer.
        for agent in agents:
            viewer.wait_for(f"{agent.root}/state", what=f"{agent.device_id} state seen by the viewer")

        # Fleet jobs published once reach a worker, and the results reach the sender.
        jobs = {f"acl-{n}": tone_wav(0.3 + 0.05 * n, freq=300 + 50 * n) for n in range(8)}
        for job_id, wav in jobs.items():
            dashboard.publish("voice/jobs/transcribe", {"job_id": job_id, "reply_to": "voice/results/dash",
                                                        "audio_b64": base64.b64encode(wav).decode()})
        for job_id in jobs:
            dashboard.wait_for("voice/results/dash", lambda m, j=job_id: m.json.get("job_id") == j
                               and m.json.get("status") == "ok", timeout=60, what=f"result of {job_id}")
        for agent in agents:   # each worker has handled every job it was handed: a second answer is out
            handled_before(dashboard, agent.root)
        finals = [m.json["job_id"] for m in dashboard.on("voice/results/dash") if m.json.get("status") != "accepted"]
        assert sorted(finals) == sorted(jobs), finals   # one final answer each, no busy

        # Home Assistant's birth message gets through; each device answers with its discovery.
        for agent in agents:
            ha.wait_for(f"homeassistant/device/{agent.device_id}/config", lambda m: bool(m.payload),
                        what=f"{agent.device_id} discovery")
        seen = {a.device_id: len(ha.on(f"homeassistant/device/{a.device_id}/config")) for a in agents}
        ha.publish("homeassistant/status", "online", retain=False)
        for agent in agents:
            ha.wait_for(f"homeassistant/device/{agent.device_id}/config", lambda m: bool(m.payload),
                        count=seen[agent.device_id] + 1, what=f"{agent.device_id} discovery after HA birth")

        # Home Assistant's buttons reach a device (a request with its answer on the device's topic).
        transaction = uuid.uuid4().hex
        ha.publish("voice/pi-a/request/ping", {"transaction": transaction})
        ha.wait_for("voice/pi-a/response/ping", lambda m: m.json.get("transaction") == transaction,
                    what="ping answered to Home Assistant")

        # A device's credentials reach only its own root (and results): no forged state, no requests.
        rogue = Probe("127.0.0.1", port, subscribe=(), username="pi-b", password="pw-b",
                      client_id=f"pi-b-rogue-{uuid.uuid4().hex[:6]}")
        probes.append(rogue)
        rogue.publish("voice/pi-a/state", json.dumps({"forged": True}))
        rogue.publish("voice/pi-a/request/pause", {})
        # Markers: the rogue's own-root publish seen after its forged ones (the broker handles one
        # client's messages in order), then pi-a's answer to a later ping (it handles them in order).
        rogue.publish("voice/pi-b/event/note", {"own": True})
        viewer.wait_for("voice/pi-b/event/note", what="the rogue's publish under its own root")
        handled_before(dashboard, "voice/pi-a")
        assert not [m for m in viewer.on("voice/pi-a/#") if b"forged" in m.payload or "pause" in m.topic], \
            "a device wrote into another device's root"
        assert probe_state(dashboard, "pi-a")["paused"] is False

        # A second install configured with pi-a's id and credentials is refused, pi-a stays online.
        twin = AgentProcess(tmp_path / "twin", port, {"mqtt": {"username": "pi-a"}, "inbox": {"enabled": False}},
                            device_id="pi-a", env={"VOICE_AGENT_MQTT_PASSWORD": DEVICES["pi-a"]})
        agents.append(twin)
        twin.start(wait_online=False)
        assert twin.proc.wait(timeout=30) == 78, twin.log()[-2000:]
        assert "pi-a" in twin.log() and probe_state(dashboard, "pi-a")["paused"] is False
    finally:
        for agent in agents:
            agent.stop()
        for p in probes:
            p.close()
        broker.terminate()
        broker.wait(timeout=10)


def probe_state(probe: Probe, device: str) -> dict:
    return probe.request(f"voice/{device}", "state")["data"]
