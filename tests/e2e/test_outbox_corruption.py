"""A corrupt outbox at start (issue 22, "Faults of storage"): a common SD-card fault.

Before, `outbox.sqlite3` holding garbage, or a valid database with one bad page, made the agent
exit 1 at every start, and systemd restarted it every 5 s forever without an alert. Now the file is
moved aside under a timestamp (kept for whoever wants to recover it), a fresh outbox starts, and an
`outbox` alert says so and how many queued events were lost (null when even that cannot be read).
A state folder where no outbox can be created at all is still an error, with a clear exit code.

Each test runs `voice-agent run` as a subprocess against a real Mosquitto; the damaged files are
written by the test (garbage), or by the agent's own Outbox and then damaged on one page.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from agent.mqtt.outbox import Outbox
from tests.support.agent import AgentProcess
from tests.support.lifecycle import alerts_of, drop
from tests.support.probe import Probe, retained

PAGE = 4096


def corrupt_alert(probe: Probe, agent: AgentProcess) -> dict:
    probe.wait_for(f"{agent.root}/event/alert", lambda m: m.json.get("kind") == "outbox", timeout=20,
                   what="the outbox alert")
    [alert] = alerts_of(probe, agent.root, "outbox")
    assert alert["level"] == "critical" and alert["reason"] == "corrupt", alert
    return alert


def still_works(probe: Probe, agent: AgentProcess) -> None:
    """The fresh outbox stores and sends: a file's transcript arrives."""
    drop(agent.inbox, "after.wav")
    probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["name"] == "after.wav",
                   timeout=30, what="a transcript through the fresh outbox")


def test_garbage_outbox_is_quarantined_and_a_fresh_one_starts(make_agent, probe: Probe, broker) -> None:
    agent = make_agent()
    state = Path(agent.config["state_dir"])
    state.mkdir(parents=True)
    garbage = os.urandom(3 * PAGE)
    (state / "outbox.sqlite3").write_bytes(garbage)
    agent.start(probe)
    alert = corrupt_alert(probe, agent)
    assert alert["lost"] is None and "an unknown number of queued events were lost" in alert["message"], alert
    quarantined = state / alert["quarantined"]
    assert alert["quarantined"].startswith("outbox.sqlite3.corrupt-") and quarantined.read_bytes() == garbage
    kept = retained(broker.host, broker.port, f"{agent.root}/alert/outbox")
    assert kept is not None and kept.json["quarantined"] == alert["quarantined"]
    still_works(probe, agent)
    assert agent.terminate() == 0


def test_outbox_with_a_bad_page_is_quarantined_and_its_lost_events_counted(make_agent, probe: Probe) -> None:
    agent = make_agent()
    state = Path(agent.config["state_dir"])
    state.mkdir(parents=True)
    path = state / "outbox.sqlite3"
    outbox = Outbox(path, max_messages=1000, max_bytes=10_000_000)
    for i in range(30):   # queued while the broker was away; 6 KB each spill onto overflow pages
        outbox.put(f"voice/{agent.device_id}/event/transcript", json.dumps({"n": i, "text": "x" * 6000}).encode())
    outbox.close()
    db = sqlite3.connect(path)
    overflow = db.execute("SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'overflow'").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:   # one page of an SD card gone bad: its chain pointer and content
        f.seek((overflow - 1) * PAGE)
        f.write(b"\xff" * PAGE)
    agent.start(probe)
    alert = corrupt_alert(probe, agent)
    assert alert["lost"] == 30 and "30 queued events were lost" in alert["message"], alert
    damaged = (state / alert["quarantined"]).read_bytes()
    assert damaged[(overflow - 1) * PAGE:overflow * PAGE] == b"\xff" * PAGE, "kept as it was found"
    still_works(probe, agent)
    assert agent.terminate() == 0


def test_a_state_folder_without_room_for_an_outbox_is_a_clear_error(tmp_path: Path, broker) -> None:
    """Not corruption (the path is a folder): nothing to quarantine, exit 69 with the reason, no traceback."""
    agent = AgentProcess(tmp_path / "agent", broker.port)
    (Path(agent.config["state_dir"]) / "outbox.sqlite3").mkdir(parents=True)
    agent.start()
    assert agent.proc is not None
    assert agent.proc.wait(timeout=30) == 69
    log = agent.log()
    assert "cannot open the outbox" in log and "Traceback" not in log, log[-2000:]
    assert not list(Path(agent.config["state_dir"]).glob("outbox.sqlite3.corrupt-*"))
