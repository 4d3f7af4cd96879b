"""The config file replaced by garbage is refused while the old config keeps running; a valid
edit that switches the broker live does not kill the agent.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.support.lifecycle import start_ready
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav
from tests.support.inbox import drop


GARBAGE = {
    "binary": lambda path: path.write_bytes(b"\xff\xfe\x00" + random.Random(8).randbytes(4096)),
    "deleted": lambda path: path.unlink(),
    "yaml-list": lambda path: path.write_text("- just\n- a list\n"),
    "truncated-empty": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_config_file_replaced_by_garbage_is_refused_old_config_keeps_running(make_agent, broker, probe, notify,
                                                                            kind):
    agent = start_ready(make_agent({"jobs": {"max_concurrent": 3}}, env=notify.env()), probe, notify)
    GARBAGE[kind](agent.config_path)
    alert = probe.wait_for(f"{agent.root}/alert/config", lambda m: m.json["level"] == "error", timeout=15,
                           what="config alert")[0].json
    assert alert["errors"], alert
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 3     # the old config runs
    hup = time.monotonic()
    agent.proc.send_signal(signal.SIGHUP)                                       # a reload changes nothing
    # systemd's reload protocol is the marker: RELOADING=1 when the reload begins, READY=1 once done
    began = notify.wait_for(lambda t: t.startswith("RELOADING=1"), after=hup, what="RELOADING=1")[0]
    notify.wait_for(lambda t: t.startswith("READY=1"), after=began, what="READY=1 after the reload")
    assert agent.alive()
    drop(agent.inbox, "still.wav", tone_wav(0.2))
    probe.wait_for(f"{agent.root}/event/transcript", what="work goes on with the old config")
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 3
    agent.write_config({**agent.config, "jobs": {"max_concurrent": 2}})        # repaired
    probe.wait_for(f"{agent.root}/alert/config", lambda m: m.payload == b"", what="alert cleared")
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["jobs"]["limit"] == 2, what="the repaired config")
    print(f"\nconfig {kind}: refused with {alert['errors'][0].rsplit(': ', 1)[-1][:90]!r}")


def test_valid_config_edit_switching_broker_live_does_not_kill_the_agent(make_agent, broker, probe):
    """A valid edit dropping mqtt.host (or a partial write that loses the mqtt section) means
    "start the local demo broker": the agent must switch, not die, and come back when restored."""
    agent = make_agent().start(probe)
    config = {k: v for k, v in agent.config.items() if k != "mqtt"}
    agent.write_config(config)
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", timeout=15,
                   what="the agent leaving the test broker")
    wait_until(lambda: "started a local Mosquitto" in agent.log(), 15, "the local broker started")
    wait_until(lambda: agent.log().count("mqtt: connected to") >= 2, 15, "connected to the local broker")
    assert agent.alive(), agent.log()[-3000:]
    agent.write_config(agent.config)                 # back to the real broker
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "online", count=2, timeout=20,
                   what="online again on the test broker")
    assert probe.request(agent.root, "ping")["status"] == "ok"
