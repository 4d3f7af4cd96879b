"""request/restart and config/set with restart: true, against a real broker.

Under a test supervisor that does what the shipped unit tells systemd to do
(tests/support/supervisor.py: INVOCATION_ID set, exit 75 started again): the answer arrives
before the agent goes offline, it comes back online as a new process, a file being transcribed
when the restart came is transcribed exactly once, and a second restart within the minute is
refused. Without a supervisor the agent re-executes itself in the same process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.lifecycle import StandInWhisper, drop, records
from tests.support.paths import REPO
from tests.support.probe import Probe
from tests.support.wait import wait_until

SUPERVISOR = REPO / "tests" / "support" / "supervisor.py"


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def onlines(probe: Probe, root: str) -> int:
    return len([m for m in probe.on(f"{root}/availability") if m.text == "online"])


def test_restart_answers_first_comes_back_and_keeps_the_running_file_once(make_agent, probe, tmp_path: Path) -> None:
    log = tmp_path / "supervisor.jsonl"
    whisper = StandInWhisper(tmp_path / "standin", job="slow", job_s=3)
    agent = make_agent(whisper.config(shutdown_grace_s=0.5),
                       wrap=[sys.executable, str(SUPERVISOR), "--events", str(log), "--"]).start(probe)
    root = agent.root
    first_state = probe.wait_for(f"{root}/state", what="retained state")[-1].json
    drop(agent.inbox, "meeting.wav")
    probe.wait_for(f"{root}/event/job", lambda m: m.json["state"] == "running", what="the file running")

    before = onlines(probe, root)
    probe.client.publish(f"{root}/request/restart", json.dumps({"transaction": "r1"}), qos=1)
    answer = probe.wait_for(f"{root}/response/restart", what="the restart answer")[0]
    assert answer.json["status"] == "ok" and answer.json["data"] == {"restarting": True}, answer.json
    probe.wait_for(f"{root}/availability", lambda m: m.text == "offline", what="offline")
    topics = [(m.topic, m.payload) for m in probe.messages]
    assert topics.index((f"{root}/response/restart", answer.payload)) < \
        topics.index((f"{root}/availability", b"offline")), "offline came before the answer"
    probe.wait_for(f"{root}/availability", lambda m: m.text == "online", count=before + 1, timeout=30,
                   what="back online")

    starts = [e for e in events(log) if e["event"] == "start"]
    exits = [e for e in events(log) if e["event"] == "exit"]
    assert len(starts) == 2 and exits[0]["code"] == 75, events(log)   # exited for systemd, started again
    state = probe.wait_for(f"{root}/state", lambda m: m.json["started_at"] != first_state["started_at"],
                           what="the new run's state")[-1].json
    assert state["version"] == first_state["version"]

    # the file that was running when the restart came: transcribed once, one record
    wait_until(lambda: "meeting.wav.json" in records(agent.inbox)["processed"], 30, "the file taken again")
    assert records(agent.inbox) == {"waiting": [], "claimed": [], "processed": ["meeting.wav", "meeting.wav.json"],
                                    "failed": []}
    done = [m.json for m in probe.on(f"{root}/event/transcript") if m.json["source"]["name"] == "meeting.wav"]
    assert len(done) == 1, done

    # a second restart within the minute (also through config/set) is refused; nothing changes
    probe.client.publish(f"{root}/request/restart", "{}", qos=1)
    refused = probe.wait_for(f"{root}/response/restart", count=2, what="second answer")[1].json
    assert refused["status"] == "error" and refused["error"]["code"] == "rate_limited", refused
    assert 0 < refused["error"]["retry_after_s"] <= 60
    probe.client.publish(f"{root}/request/config/set",
                         json.dumps({"config": {"jobs": {"retry_after_s": 7}}, "restart": True}), qos=1)
    refused = probe.wait_for(f"{root}/response/config/set", what="config/set answer")[0].json
    assert refused["error"]["code"] == "rate_limited", refused
    assert not (Path(agent.config["state_dir"]) / "config-overlay.yaml").exists(), "the change was applied anyway"
    assert len([e for e in events(log) if e["event"] == "start"]) == 2


def test_config_set_with_restart_applies_then_restarts_and_re_executes_without_a_supervisor(
        make_agent, probe, tmp_path: Path) -> None:
    agent = make_agent().start(probe)
    root, pid = agent.root, agent.proc.pid
    before = onlines(probe, root)
    # never on the fleet-wide topic: one publish would restart every device at once
    probe.client.publish("voice/all/request/restart", "{}", qos=1)
    refused = probe.wait_for(f"{root}/response/restart", what="the fleet-wide refusal")[0].json
    assert refused["error"]["code"] == "forbidden", refused
    probe.client.publish(f"{root}/request/config/set",
                         json.dumps({"config": {"jobs": {"retry_after_s": 7}}, "restart": True}), qos=1)
    answer = probe.wait_for(f"{root}/response/config/set", what="the answer")[0].json
    assert answer["status"] == "ok" and answer["data"]["restarting"] is True, answer
    probe.wait_for(f"{root}/availability", lambda m: m.text == "online", count=before + 1, timeout=30,
                   what="back online")
    assert agent.alive() and agent.proc.pid == pid, "re-executed in the same process"
    config = probe.wait_for(f"{root}/config", lambda m: m.json["config"]["jobs"]["retry_after_s"] == 7,
                            what="the change kept across the restart")
    assert config
    assert "restart requested over MQTT" in agent.log()
    assert agent.terminate() == 0
