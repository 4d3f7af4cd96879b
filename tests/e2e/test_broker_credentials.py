"""Broker credentials: a password from the environment or a file works and is never disclosed; a
wrong one is refused by Mosquitto with a clear error, and retried.
"""

from __future__ import annotations

from tests.support.wait import all_delivered

from tests.support.agent import AgentProcess
from tests.support.probe import Probe
from tests.support.wavs import tone_wav
from tests.support.broker_access import auth_broker, refused_offline


SECRET = "Xk9-very-secret-Broker-Pa55"
OTHER_SECRET = "Zq7-another-secret-never-echoed"


def test_password_from_env_or_file_works_and_is_never_disclosed(tmp_path):
    broker = auth_broker(tmp_path / "broker", {"dashboard": "dash-pw", "dev-env": SECRET, "dev-file": SECRET})
    dash = Probe(broker.host, broker.port, username="dashboard", password="dash-pw")
    pw_file = tmp_path / "mqtt-password"
    pw_file.write_text(SECRET + "\n")
    pw_file.chmod(0o600)
    env_agent = AgentProcess(tmp_path / "env", broker.port, {"mqtt": {"username": "dev-env"}}, device_id="dev-env",
                             env={"VOICE_AGENT_MQTT_PASSWORD": SECRET})
    file_agent = AgentProcess(tmp_path / "file", broker.port,
                              {"mqtt": {"username": "dev-file", "password_file": str(pw_file)}}, device_id="dev-file")
    try:
        for agent in (env_agent, file_agent):
            agent.start(dash)
            assert dash.request(agent.root, "ping")["status"] == "ok"
            config = dash.request(agent.root, "config/get")["data"]["config"]["mqtt"]
            assert config["password"] == "***"
            # Credentials are local only and a refusal never echoes them; a misspelt key is not echoed.
            bad = dash.request(agent.root, "config/set", {"config": {"mqtt": {"password": 12345}}})
            assert bad["error"]["code"] == "forbidden" and "12345" not in str(bad)
            typo = dash.request(agent.root, "config/set", {"config": {"mqtt": {"pasword": OTHER_SECRET}}})
            assert typo["error"]["code"] == "invalid_config"
            dash.request(agent.root, "stats")
            dash.request(agent.root, "state")
            (agent.inbox).mkdir(parents=True, exist_ok=True)
            (agent.inbox / "a.wav").write_bytes(tone_wav(0.2))
            dash.wait_for(f"{agent.root}/event/transcript", what="a transcript")
        for agent in (env_agent, file_agent):
            all_delivered(dash, agent.root)   # every event published so far is in dash.messages
        published = [m for m in dash.messages if "/request/" not in m.topic]   # our own requests aside
        assert len(published) > 20
        for m in published:
            assert SECRET.encode() not in m.payload, m.topic
            assert OTHER_SECRET.encode() not in m.payload, m.topic
        for agent in (env_agent, file_agent):
            log = agent.log()
            assert "DEBUG" in log   # the log level under test really is DEBUG
            assert SECRET not in log and OTHER_SECRET not in log
            assert SECRET not in (agent.workdir / "state" / "outbox.sqlite3").read_bytes().decode("latin-1")
    finally:
        env_agent.stop()
        file_agent.stop()
        dash.close()
        broker.stop()


def test_wrong_password_is_refused_with_a_clear_error_and_retried(tmp_path):
    broker = auth_broker(tmp_path / "broker", {"dashboard": "dash-pw", "dev": SECRET})
    dash = Probe(broker.host, broker.port, username="dashboard", password="dash-pw")
    wrong = "wrong-" + SECRET[::-1]
    wrong_file, right_file = tmp_path / "wrong-pw", tmp_path / "right-pw"
    for path, text in ((wrong_file, wrong), (right_file, SECRET)):
        path.write_text(text + "\n")
        path.chmod(0o600)
    agent = AgentProcess(tmp_path / "agent", broker.port,
                         {"mqtt": {"username": "dev", "password_file": str(wrong_file)}}, device_id="dev")
    try:
        agent.start(dash, wait_online=False)
        refusals = refused_offline(agent, dash,
                                   r"mqtt: broker refused the connection: .*(user name or password|[Nn]ot authori)")
        print(refusals[0])
        assert "Traceback" not in agent.log()
        # The operator points the config at the right file: picked up live, no restart.
        agent.config["mqtt"]["password_file"] = str(right_file)
        agent.write_config(agent.config)
        dash.wait_for(f"{agent.root}/availability", lambda m: m.text == "online", timeout=20,
                      what="online after the password was fixed")
        assert dash.request(agent.root, "ping")["status"] == "ok"
        assert SECRET not in agent.log() and wrong not in agent.log()
        for m in dash.messages:
            assert SECRET.encode() not in m.payload and wrong.encode() not in m.payload, m.topic
    finally:
        agent.stop()
        dash.close()
        broker.stop()
