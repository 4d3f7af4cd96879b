"""Config changes while running: config/set (valid, invalid, persisted, reset), the allow-list with
remote config off, a file edit applied live (an invalid one refused), and SIGHUP.
"""

from __future__ import annotations

import json

from tests.support.probe import retained


SECRET = "s3cret-Pa55word"


def test_allowed_commands_and_remote_config_off(make_agent, probe):
    agent = make_agent({"mqtt": {"allowed_commands": ["ping", "config/set"], "remote_config": False}}).start(probe)
    assert probe.request(agent.root, "ping")["status"] == "ok"
    assert probe.request(agent.root, "state")["error"]["code"] == "forbidden"
    answer = probe.request(agent.root, "config/set", {"config": {"jobs": {"max_concurrent": 2}}})
    assert answer["error"]["code"] == "forbidden"


def test_config_set_valid_invalid_persisted_and_reset(make_agent, probe):
    agent = make_agent().start(probe)
    rev0 = probe.request(agent.root, "config/get")["data"]["revision"]

    bad = probe.request(agent.root, "config/set", {"config": {"jobs": {"max_concurrent": 0, "bogus": 1},
                                                              "mqtt": {"prot": "5"}}})
    assert bad["error"]["code"] == "invalid_config"
    paths = {e["path"] for e in bad["error"]["errors"]}
    assert paths == {"jobs.max_concurrent", "jobs.bogus", "mqtt.prot"}
    assert probe.request(agent.root, "config/get")["data"]["revision"] == rev0   # nothing changed

    secret = probe.request(agent.root, "config/set", {"config": {"mqtt": {"password": SECRET}}})
    assert secret["error"]["code"] == "forbidden" and secret["error"]["keys"] == ["mqtt.password"]
    assert SECRET not in json.dumps(secret)   # credentials are local only, and never echoed

    ok = probe.request(agent.root, "config/set", {"config": {"jobs": {"max_concurrent": 2},
                                                             "mqtt": {"keepalive_s": 30}}})
    assert ok["status"] == "ok", ok
    assert ok["data"]["revision"] != rev0 and ok["data"]["restarted"] == ["mqtt"]
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["jobs"]["limit"] == 2, what="state with limit 2")
    config = probe.wait_for(f"{agent.root}/config", lambda m: m.json["revision"] == ok["data"]["revision"])[0].json
    assert config["config"]["mqtt"]["keepalive_s"] == 30
    assert config["config"]["jobs"]["max_concurrent"] == 2

    agent.terminate()
    agent.start(probe)   # persisted across a restart
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 2
    reset = probe.request(agent.root, "config/reset")
    assert reset["status"] == "ok" and reset["data"]["revision"] == rev0
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 1
    for m in probe.messages:
        if "/request/" not in m.topic:   # only our own request carries it
            assert SECRET.encode() not in m.payload, m.topic
    assert SECRET not in agent.log()


def test_config_file_edit_applied_live_and_invalid_edit_refused(make_agent, broker, probe):
    agent = make_agent().start(probe)
    agent.config["jobs"] = {"max_concurrent": 3}
    agent.write_config(agent.config)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["jobs"]["limit"] == 3, what="limit 3 applied live")

    agent.config_path.write_text("jobs:\n  max_concurrent: 3\n  surprise: [unclosed\n")
    alert = probe.wait_for(f"{agent.root}/event/alert", lambda m: m.json["kind"] == "config",
                           what="config alert")[0].json
    assert alert["level"] == "error" and alert["errors"]
    kept = retained(broker.host, broker.port, f"{agent.root}/alert/config")
    assert kept is not None and kept.json["level"] == "error"
    assert probe.request(agent.root, "state")["data"]["jobs"]["limit"] == 3   # old config keeps running
    agent.write_config({**agent.config, "jobs": {"max_concurrent": 1}})
    probe.wait_for(f"{agent.root}/alert/config", lambda m: m.payload == b"", what="alert cleared")
    assert retained(broker.host, broker.port, f"{agent.root}/alert/config", timeout=1) is None
    stats = probe.request(agent.root, "stats")["data"]
    assert stats["caches"]["config"]["misses"] >= 3 and stats["caches"]["config"]["hits"] >= 1


def test_sighup_reloads(make_agent, probe):
    agent = make_agent().start(probe)
    agent.config["jobs"] = {"max_concurrent": 4}
    agent.write_config(agent.config)
    agent.proc.send_signal(1)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["jobs"]["limit"] == 4, what="limit 4 after SIGHUP")
