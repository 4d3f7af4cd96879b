"""A full disk in the state folder: an alert, nothing corrupted, and recovery once space is back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.wait import wait_until
from tests.support.probe import Probe
from tests.support.wavs import tone_wav
from tests.support.inbox import drop
from tests.support.disk import fill as _fill, small_tmpfs


@pytest.fixture
def small_state(tmp_path):
    """A 2 MB tmpfs as the agent's state_dir (root only)."""
    with small_tmpfs(tmp_path / "agent" / "state") as state:
        yield state


def test_disk_full_in_state_dir_alerts_corrupts_nothing_and_recovers(tmp_path, small_state):
    broker = Broker(tmp_path / "pbroker", persistent=True).start()
    probe = Probe(broker.host, broker.port, protocol="3.1.1", client_id="disk-sub", persistent=True)
    agent = AgentProcess(tmp_path / "agent", broker.port, {"memory": {"min_disk_free_mb": 0.25, "interval_s": 0.3}})
    try:
        _disk_full_scenario(agent, broker, probe, small_state)
    finally:
        agent.stop()
        probe.close()
        broker.stop()


def _disk_full_scenario(agent: AgentProcess, broker: Broker, probe: Probe, small_state: Path) -> None:
    assert Path(agent.config["state_dir"]) == small_state
    agent.start(probe)
    ok = probe.request(agent.root, "config/set", {"config": {"jobs": {"cache_size": 7}}})
    assert ok["status"] == "ok", ok
    overlay = small_state / "config-overlay.yaml"
    overlay_before = overlay.read_bytes()
    drop(agent.inbox, "before.wav", tone_wav(0.2))
    probe.wait_for(f"{agent.root}/event/transcript", what="transcript before the disk fills")

    # Events stored while the broker is away, then the disk fills: they must still be delivered,
    # and deleting them once acknowledged (which needs disk space too) must not stop the sender.
    broker.stop()
    for i in range(3):
        drop(agent.inbox, f"queued{i}.wav", tone_wav(0.3 + i / 100))
    wait_until(lambda: len(list((agent.inbox / "processed").glob("queued*.wav.json"))) == 3, 30,
               "files processed while the broker is down")
    filler = _fill(small_state)
    broker.start()
    disk = probe.wait_for(f"{agent.root}/alert/disk", lambda m: m.json["level"] == "critical", timeout=20,
                          what="disk alert")[0].json
    assert disk["path"] == str(small_state) and disk["free_mb"] < 0.25
    probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["name"].startswith("queued"),
                   count=3, timeout=20, what="stored events delivered while the disk is full")
    for i in range(5):
        drop(agent.inbox, f"full{i}.wav", tone_wav(0.2 + i / 100))
    wait_until(lambda: len(list((agent.inbox / "processed").glob("full*.wav.json"))) == 5, 30,
               "files processed while the state disk is full")
    refused = probe.request(agent.root, "config/set", {"config": {"jobs": {"cache_size": 9}}})
    assert refused["status"] == "error" and refused["error"]["code"] == "storage_error", refused
    assert overlay.read_bytes() == overlay_before               # the old overlay is untouched
    assert probe.request(agent.root, "ping")["status"] == "ok"
    time.sleep(1)
    alerts = {m.topic.rsplit("/", 1)[1]: m.json for m in probe.on(f"{agent.root}/alert/+") if m.payload}
    lost = 5 - len({m.json["source"]["name"] for m in probe.on(f"{agent.root}/event/transcript")
                    if m.json["source"]["name"].startswith("full")})
    print(f"\ndisk full: alerts {sorted(alerts)}; {lost}/5 transcripts of files done while full could not be "
          f"stored; config/set answered {refused['error']['code']}: {refused['error']['message']}")

    filler.unlink()                                              # space returns
    probe.wait_for(f"{agent.root}/alert/disk", lambda m: m.payload == b"", timeout=15, what="disk alert cleared")
    drop(agent.inbox, "after.wav", tone_wav(0.7))
    probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["name"] == "after.wav",
                   timeout=20, what="events flow again")
    again = probe.request(agent.root, "config/set", {"config": {"jobs": {"cache_size": 11}}})
    assert again["status"] == "ok", again
    wait_until(lambda: probe.request(agent.root, "stats")["data"]["outbox"]["queued"] == 0, 15,
               "acknowledged events deleted once space returned")
    if "outbox" in alerts:
        probe.wait_for(f"{agent.root}/alert/outbox", lambda m: m.payload == b"", timeout=15,
                       what="outbox alert cleared once events are stored again")
    agent.terminate()
    db = sqlite3.connect(str(small_state / "outbox.sqlite3"))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    finally:
        db.close()
    assert yaml.safe_load(overlay.read_text()) == {"jobs": {"cache_size": 11}}
