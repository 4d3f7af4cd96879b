"""Fleet offload (issue #25, point 5): a device in the Pi envelope hands its jobs to a worker.

- The broker authenticates every client and its ACL is rendered from the Ansible role's own
  template (`mosquitto_broker_fleet_workers` and `mosquitto_broker_fleet_offload` on), so the
  audio and the results travel only on topics that template grants.
- The device (`voice-agent run` in a 448 MB cgroup with 0.4 of a core) runs
  `transcriber.engine: fleet` with PocketSphinx as its fallback; the worker is an unconstrained
  agent with faster-whisper (Whisper base). Real recordings dropped into the device's inbox come
  back as the device's own transcripts whose engine names the worker.
- The worker is killed: the next recordings are transcribed by the fallback on the device.
- Nothing is lost: every file is in processed/, none in failed/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import pytest

from tests.support import real_speech
from tests.support.agent import AgentProcess
from tests.support.broker_access import auth_broker
from tests.support.cgroup import Box, CgroupUnavailable
from tests.support.models import REPO_ROOT, faster_whisper_model_dir
from tests.support.probe import Probe
from tests.support.wait import wait_until

MB = 1024 * 1024
USERS = {"dashboard": "dash-pw", "pi-small": "small-pw", "big-worker": "worker-pw"}
TEMPLATE = REPO_ROOT / "ansible/roles/mosquitto_broker/templates/voice-agent.acl.j2"


def role_acl() -> str:
    """The role's ACL template rendered for this test's users (Ansible's `bool` filter stood in by Python's)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), keep_trailing_newline=True)
    env.filters["bool"] = bool
    return env.get_template(TEMPLATE.name).render(
        ansible_managed="test", mosquitto_broker_topic_prefix="voice",
        mosquitto_broker_homeassistant_prefix="homeassistant", mosquitto_broker_homeassistant=False,
        mosquitto_broker_homeassistant_password="", mosquitto_broker_dashboard_username="dashboard",
        mosquitto_broker_dashboard_password="dash-pw", mosquitto_broker_readers=[],
        mosquitto_broker_fleet_workers=True, mosquitto_broker_fleet_offload=True,
        __mosquitto_broker_devices=[{"device_id": d, "username": d} for d in ("pi-small", "big-worker")])


def drop(agent: AgentProcess, recordings: list, tag: str) -> list[str]:
    agent.inbox.mkdir(parents=True, exist_ok=True)
    names = []
    for i, rec in enumerate(recordings):
        name = f"{tag}-{i}-{rec.path.name}"
        shutil.copy(rec.path, agent.inbox / f".{name}.part")
        (agent.inbox / f".{name}.part").rename(agent.inbox / name)
        names.append(name)
    return names


def records(agent: AgentProcess, names: list[str]) -> list[dict]:
    wait_until(lambda: all((agent.inbox / "processed" / f"{n}.json").exists() for n in names), 180,
               f"{names} processed")
    return [json.loads((agent.inbox / "processed" / f"{n}.json").read_text()) for n in names]


@pytest.mark.slow
def test_device_offloads_to_worker_and_falls_back_when_it_dies(tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper", reason="pip install '.[faster-whisper]'")
    pytest.importorskip("pocketsphinx", reason="pip install '.[pocketsphinx]'")
    try:
        model = faster_whisper_model_dir(REPO_ROOT / ".cache/models/faster-whisper-base")
    except FileNotFoundError as exc:
        pytest.skip(f"faster-whisper base model: {exc}")
    sentences = real_speech.require(2, kinds=("sentence",))[:2]   # people reading: the worker's part
    commands = real_speech.require(2, kinds=("command",))[:2]     # short: the fallback's part
    try:
        box = Box.create(448 * MB, cpu_quota=0.4, name="va-offload")
    except CgroupUnavailable as exc:
        pytest.skip(f"cgroups cannot be written here: {exc}")
    acl = role_acl()
    assert "topic read voice/results/pi-small/offload" in acl and "topic write voice/jobs/transcribe" in acl
    broker = auth_broker(tmp_path / "broker", USERS, acl=acl)
    # not on `#`: a subscriber matching the jobs topic would make the broker call every job
    # delivered; with none, a job published after the worker died is refused at once (PUBACK 16)
    dash = Probe(broker.host, broker.port, username="dashboard", password="dash-pw",
                 subscribe=("voice/pi-small/#", "voice/big-worker/#"))
    worker = AgentProcess(tmp_path / "worker", broker.port, {
        "mqtt": {"username": "big-worker"}, "fleet": {"worker": True}, "inbox": {"enabled": False},
        "summarizer": {"engine": "none"},
        "transcriber": {"engine": "faster_whisper", "faster_whisper": {"model": str(model)}},
    }, device_id="big-worker", env={"VOICE_AGENT_MQTT_PASSWORD": "worker-pw"})
    device = AgentProcess(tmp_path / "device", broker.port, {
        "mqtt": {"username": "pi-small"},
        "transcriber": {"engine": "fleet", "fleet": {"timeout_s": 30, "fallback": "pocketsphinx"}},
        "summarizer": {"engine": "extractive"},
    }, device_id="pi-small", env={"VOICE_AGENT_MQTT_PASSWORD": "small-pw"})
    try:
        worker.start(dash, timeout=60)
        wait_until(lambda: dash.request(worker.root, "state")["data"]["engines"]["transcriber"]["ready"], 120,
                   "faster-whisper loaded on the worker")
        device.start(None, wait_online=False)
        box.add(device.proc.pid)
        dash.wait_for(f"{device.root}/availability", lambda m: m.text == "online", timeout=60, what="device online")

        # 1. Transcripts come from the worker, published as the device's own.
        first = records(device, drop(device, sentences, "worker"))
        assert [r["engines"]["transcriber"] for r in first] == ["fleet:big-worker/faster_whisper"] * 2, first
        pairs = [(rec.text, r["transcript"]) for rec, r in zip(sentences, first)]
        assert real_speech.wer(pairs) <= 0.2, pairs   # Whisper base's words, not PocketSphinx's
        events = [m.json for m in dash.on(f"{device.root}/event/transcript")]
        assert [e["engine"] for e in events] == ["fleet:big-worker/faster_whisper"] * 2, events

        # 2. The worker dies: the device falls back to its own PocketSphinx.
        worker.kill9()
        second = records(device, drop(device, commands, "fallback"))
        assert [r["engines"]["transcriber"] for r in second] == ["pocketsphinx"] * 2, second
        assert all(r["transcript"].strip() for r in second), second

        # 3. Nothing lost.
        failed = device.inbox / "failed"
        assert not failed.is_dir() or not list(failed.iterdir()), list(failed.iterdir())
        assert box.oom_kills() == 0 and device.alive()
    finally:
        device.stop()
        worker.stop()
        box.close()
        dash.close()
        broker.stop()


def test_without_fallback_a_file_stays_queued_until_a_worker_answers(make_agent, probe: Probe, tmp_path: Path) -> None:
    """`transcriber.fleet.fallback` unset and no worker: the job fails `engine_unavailable`, the
    file stays claimed and queued (however many tries that takes), and is transcribed by the
    first worker that joins. The worker is the whisper.cpp stand-in (tests/support/fleet.py)."""
    from tests.support.fleet import worker_config
    from tests.support.wavs import tone_wav

    device = make_agent({"transcriber": {"engine": "fleet", "fleet": {"timeout_s": 2}},
                         "jobs": {"retry_tries": 1, "retry_backoff_s": 0.5}}, name="device", device_id="pi-small")
    device.start(probe)
    device.inbox.mkdir(parents=True, exist_ok=True)
    (device.inbox / ".wait.wav.part").write_bytes(tone_wav(0.5))
    (device.inbox / ".wait.wav.part").rename(device.inbox / "wait.wav")
    kept = probe.wait_for(f"{device.root}/event/job", lambda m: m.json.get("state") == "queued" and "retry" in m.json,
                          count=2, timeout=30, what="the job queued again twice (beyond retry_tries 1)")
    assert kept[-1].json["retry"]["error"]["code"] == "engine_unavailable", kept[-1].json
    assert not (device.inbox / "failed").is_dir() or not list((device.inbox / "failed").iterdir())

    worker = make_agent(worker_config(tmp_path), name="worker", device_id="big-worker")
    worker.start(probe)
    wait_until(lambda: (device.inbox / "processed" / "wait.wav.json").exists(), 60, "the kept file transcribed")
    record = json.loads((device.inbox / "processed" / "wait.wav.json").read_text())
    assert record["engines"]["transcriber"] == "fleet:big-worker/whisper_cpp", record
