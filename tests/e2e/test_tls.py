"""Access: TLS, credentials, the ACL of docs/mosquitto-acl.md, command allow-lists, no shell.

Every broker here is a real Mosquitto configured by the test; every agent runs as a subprocess.
Nothing is mocked: a refused certificate is refused by OpenSSL, a wrong password by Mosquitto.
"""

from __future__ import annotations

import ast
import re
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.agent import AgentProcess
from tests.support.broker import Broker, free_port
from tests.support.probe import Probe
from tests.support.tls import Pki, make_pki
from tests.support.wavs import tone_wav

REPO = Path(__file__).resolve().parents[1]
SECRET = "Xk9-very-secret-Broker-Pa55"
OTHER_SECRET = "Zq7-another-secret-never-echoed"


def _never_online(agent: AgentProcess, probe: Probe, seconds: float) -> None:
    time.sleep(seconds)
    assert agent.alive(), f"the agent exited:\n{agent.log()[-2000:]}"
    assert not [m for m in probe.on(f"{agent.root}/availability") if m.text == "online"], "the agent got online"


def _wait_log(agent: AgentProcess, pattern: str, count: int = 1, timeout: float = 20) -> list[str]:
    """Wait until `pattern` (a regex) matches `count` lines of the agent's log."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in agent.log().splitlines() if re.search(pattern, line)]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, (f"{count} x /{pattern}/ not in the log within {timeout}s; "
                                             f"log tail:\n{agent.log()[-2500:]}")
        time.sleep(0.2)


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_broker(workdir: Path, pki: Pki, *, require_certificate: bool, other_name: bool = False) -> tuple[Broker, int]:
    """Mosquitto with a TLS listener (agents) and a plain loopback listener (the test's probe)."""
    tls_port, plain_port = free_port(), free_port()
    cert, key = (pki.other_cert, pki.other_key) if other_name else (pki.server_cert, pki.server_key)
    conf = (f"listener {plain_port} 127.0.0.1\n"
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {pki.ca}\ncertfile {cert}\nkeyfile {key}\n"
            f"require_certificate {'true' if require_certificate else 'false'}\n"
            "allow_anonymous true\n")
    return Broker(workdir, extra_conf=conf, port=tls_port).start(), plain_port


@pytest.mark.parametrize("mutual", [False, True], ids=["server-verified", "client-certificate"])
def test_tls_agent_online_with_verified_server_and_client_certificate(tmp_path, pki, mutual):
    broker, plain = _tls_broker(tmp_path / "broker", pki, require_certificate=mutual)
    probe = Probe(broker.host, plain)
    tls = {"ca_file": str(pki.ca)}
    if mutual:
        tls |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    agent = AgentProcess(tmp_path / "agent", broker.port, {"mqtt": {"tls": tls}})
    try:
        agent.start(probe)
        assert probe.request(agent.root, "ping")["data"] == {"pong": True}   # over the TLS link
        assert probe.request(agent.root, "config/get")["data"]["config"]["mqtt"]["tls"]["ca_file"] == str(pki.ca)
    finally:
        agent.stop()
        probe.close()
        broker.stop()


def test_tls_missing_client_certificate_is_refused_and_retried(tmp_path, pki):
    broker, plain = _tls_broker(tmp_path / "broker", pki, require_certificate=True)
    probe = Probe(broker.host, plain)
    agent = AgentProcess(tmp_path / "agent", broker.port, {"mqtt": {"tls": {"ca_file": str(pki.ca)}}})
    try:
        agent.start(probe, wait_online=False)
        _never_online(agent, probe, 4)
        failures = _wait_log(agent, r"mqtt.*certificate required", count=2)
        assert "Traceback" not in agent.log(), agent.log()[-3000:]
        print("\n".join(failures[:2]))
    finally:
        agent.stop()
        probe.close()
        broker.stop()


def test_tls_wrong_ca_is_refused_with_a_clear_error_and_retried(tmp_path, pki):
    broker, plain = _tls_broker(tmp_path / "broker", pki, require_certificate=False)
    probe = Probe(broker.host, plain)
    agent = AgentProcess(tmp_path / "agent", broker.port, {"mqtt": {"tls": {"ca_file": str(pki.wrong_ca)}}})
    try:
        agent.start(probe, wait_online=False)
        _never_online(agent, probe, 4)
        failures = _wait_log(agent, r"mqtt: cannot connect .*certificate verify failed", count=2)
        assert "Traceback" not in agent.log()
        print(failures[0])
        # The operator fixes the CA file reference: the running agent connects, no restart needed.
        agent.config["mqtt"]["tls"]["ca_file"] = str(pki.ca)
        agent.write_config(agent.config)
        probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "online", timeout=20,
                       what="online after the CA was fixed")
    finally:
        agent.stop()
        probe.close()
        broker.stop()


def test_tls_hostname_mismatch_refused_unless_insecure(tmp_path, pki):
    broker, plain = _tls_broker(tmp_path / "broker", pki, require_certificate=False, other_name=True)
    probe = Probe(broker.host, plain)
    agent = AgentProcess(tmp_path / "agent", broker.port, {"mqtt": {"tls": {"ca_file": str(pki.ca)}}})
    try:
        agent.start(probe, wait_online=False)
        _never_online(agent, probe, 3)
        failures = _wait_log(agent, r"mqtt: cannot connect .*([Hh]ostname mismatch|not valid for)", count=1)
        print(failures[0])
        agent.config["mqtt"]["tls"]["insecure"] = True     # explicitly opted in: now it connects
        agent.write_config(agent.config)
        probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "online", timeout=20,
                       what="online with tls.insecure")
        assert probe.request(agent.root, "ping")["status"] == "ok"
    finally:
        agent.stop()
        probe.close()
        broker.stop()


# --- user name and password --------------------------------------------------------------------


def _passwd_file(path: Path, users: dict[str, str]) -> Path:
    for i, (user, password) in enumerate(users.items()):
        args = ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(path), user, password]
        subprocess.run(args, check=True, capture_output=True)
    path.chmod(0o600)
    return path


def _auth_broker(workdir: Path, users: dict[str, str], acl: str | None = None) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {_passwd_file(workdir / 'passwd', users)}\n")
    if acl is not None:
        (workdir / "acl").write_text(acl)
        conf += f"acl_file {workdir / 'acl'}\n"
    return Broker(workdir, extra_conf=conf, port=port).start()


def test_password_from_env_or_file_works_and_is_never_disclosed(tmp_path):
    broker = _auth_broker(tmp_path / "broker", {"dashboard": "dash-pw", "dev-env": SECRET, "dev-file": SECRET})
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
        time.sleep(0.5)
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
    broker = _auth_broker(tmp_path / "broker", {"dashboard": "dash-pw", "dev": SECRET})
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
        _never_online(agent, dash, 3)
        refusals = _wait_log(agent, r"mqtt: broker refused the connection: .*(user name or password|[Nn]ot authori)",
                             count=2)
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


# --- the ACL of docs/mosquitto-acl.md ----------------------------------------------------------


def _doc_blocks() -> list[str]:
    text = (REPO / "docs" / "mosquitto-acl.md").read_text()
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def _doc_block(marker: str) -> str:
    found = [b for b in _doc_blocks() if marker in b]
    assert len(found) == 1, f"docs/mosquitto-acl.md should hold exactly one block with {marker!r}"
    return found[0]


ACL_FORMS = {
    "per-user": "(generated by the mosquitto_broker role)",
    "pattern": "pattern write voice/%c/#",
}


@pytest.mark.parametrize("form", sorted(ACL_FORMS))
def test_documented_acl_confines_each_device_to_its_own_topics(tmp_path, form):
    acl = _doc_block(ACL_FORMS[form])   # as written in the doc
    conf = _doc_block("acl_file /etc/mosquitto/voice-agent.acl")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    port = free_port()
    users = {"dashboard": "dash-pw", "pi-kitchen": "kitchen-pw", "pi-hallway": "hallway-pw"}
    (workdir / "voice-agent.acl").write_text(acl)
    _passwd_file(workdir / "voice-agent.passwd", users)
    conf = (conf.replace("listener 1883", f"listener {port} 127.0.0.1")
            .replace("/etc/mosquitto/voice-agent.passwd", str(workdir / "voice-agent.passwd"))
            .replace("/etc/mosquitto/voice-agent.acl", str(workdir / "voice-agent.acl")))
    assert "allow_anonymous false" in conf and str(port) in conf
    broker = Broker(workdir, extra_conf=conf, port=port).start()
    dash = Probe(broker.host, broker.port, username="dashboard", password="dash-pw")
    agents = {name: AgentProcess(tmp_path / name, broker.port, {"mqtt": {"username": name}}, device_id=name,
                                 env={"VOICE_AGENT_MQTT_PASSWORD": users[name]})
              for name in ("pi-kitchen", "pi-hallway")}
    intruder = None
    try:
        # Under the ACL both agents do everything they need: will, retained facts, events, answers.
        for agent in agents.values():
            agent.start(dash)
            assert dash.request(agent.root, "ping")["status"] == "ok"
            dash.wait_for(f"{agent.root}/state", what="retained state")
            dash.wait_for(f"{agent.root}/config", what="retained config")
        hallway = agents["pi-hallway"]
        hallway.inbox.mkdir(parents=True, exist_ok=True)
        (hallway.inbox / "x.wav").write_bytes(tone_wav(0.2))
        dash.wait_for(f"{hallway.root}/event/transcript", what="hallway transcript")
        dash.publish("voice/all/request/ping", {"transaction": "fleet"})
        for agent in agents.values():
            dash.wait_for(f"{agent.root}/response/ping", lambda m: m.json["transaction"] == "fleet",
                          what=f"{agent.device_id} answers a fleet-wide request")

        # Stolen kitchen credentials (the kitchen agent is off, so the client id is free).
        agents["pi-kitchen"].terminate()
        intruder = Probe(broker.host, broker.port, username="pi-kitchen", password="kitchen-pw",
                             client_id="pi-kitchen", subscribe=("voice/pi-hallway/#", "voice/+/event/#"))
        intruder.publish("voice/pi-hallway/request/ping", {"transaction": "intruder"})
        intruder.publish("voice/pi-hallway/request/pause", {"transaction": "intruder-pause"})
        intruder.publish("voice/pi-hallway/state", {"forged": True}, retain=True)
        intruder.publish("voice/pi-hallway/event/transcript", {"forged": True})
        intruder.publish("voice/pi-kitchen/event/note", {"own": True})       # its own root: allowed
        dash.wait_for("voice/pi-kitchen/event/note", what="the device's publish under its own root")
        (hallway.inbox / "y.wav").write_bytes(tone_wav(0.3))                 # hallway keeps working
        dash.wait_for(f"{hallway.root}/event/transcript", count=2, what="second hallway transcript")
        assert dash.request(hallway.root, "state")["data"]["paused"] is False   # the pause never arrived
        time.sleep(1)
        assert not [m for m in dash.on("voice/pi-hallway/#") if b"intruder" in m.payload or b"forged" in m.payload]
        assert not [m for m in dash.on("voice/pi-hallway/response/ping") if m.json.get("transaction") == "intruder"]
        assert intruder.messages == [], "a device read another device's topics"
    finally:
        if intruder is not None:
            intruder.close()
        for agent in agents.values():
            agent.stop()
        dash.close()
        broker.stop()


# --- allowed_commands and remote_config: a fuzz-level check ------------------------------------

COMMANDS = ["ping", "state", "stats", "config/get", "config/set", "config/reset", "pause", "resume", "transcribe",
            "summarize"]
bodies = st.one_of(
    st.just({}),
    st.dictionaries(st.sampled_from(["config", "text", "file", "audio_b64", "summarize", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                              st.dictionaries(st.sampled_from(["jobs", "mqtt"]),
                                              st.dictionaries(st.sampled_from(["max_concurrent", "remote_config"]),
                                                              st.one_of(st.integers(0, 4), st.booleans()))),
                              ), max_size=3),
)


def test_allowed_commands_and_remote_config_hold_for_any_request(make_agent, probe):
    agent = make_agent({"mqtt": {"allowed_commands": ["ping", "config/set", "config/reset"],
                                 "remote_config": False}}).start(probe)
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(command=st.one_of(st.sampled_from(COMMANDS), st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True)),
           body=bodies)
    def check(command, body):
        answer = probe.request(agent.root, command, body)
        if command == "ping" and answer["status"] == "ok":
            return
        assert answer["status"] == "error", (command, body, answer)
        code = answer["error"]["code"]
        if command in ("config/set", "config/reset"):
            assert code in ("forbidden", "bad_request"), (command, body, answer)
        elif command == "ping":
            assert code == "bad_request"
        elif command in COMMANDS:
            assert code == "forbidden", (command, answer)
        else:
            assert code in ("unknown_command", "forbidden"), (command, answer)

    check()
    overlay = agent.workdir / "state" / "config-overlay.yaml"
    assert not overlay.exists(), "a remote config change got through"
    assert probe.request(agent.root, "ping")["status"] == "ok"


# --- subprocesses never go through a shell -----------------------------------------------------

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell"), ("pty", "spawn")}


def _sources() -> list[Path]:
    files = sorted((REPO / "agent").rglob("*.py")) + sorted((REPO / "handlers").rglob("*.py"))
    assert len(files) > 20
    return files


def test_no_shell_anywhere_in_agent_or_handlers():
    problems = []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(REPO)
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"shell\s*=\s*True|os\.system\s*\(|os\.popen\s*\(|create_subprocess_shell", line):
                problems.append(f"{rel}:{n}: {line.strip()}")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:   # shell=<anything but a literal False>
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{rel}:{node.lineno}: shell={ast.unparse(kw.value)}")
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in SHELL_CALLS:
                    problems.append(f"{rel}:{node.lineno}: {func.value.id}.{func.attr}()")
    assert not problems, "shell use found:\n" + "\n".join(problems)


def test_engine_command_lines_are_lists_in_the_schema():
    import dataclasses
    import typing

    from agent import settings as s
    for cls, name in ((s.LlamaServerSettings, "command"), (s.LlamaServerSettings, "oneshot_command"),
                      (s.WhisperServerSettings, "command"), (s.WhisperCppSettings, "extra_args")):
        hint = typing.get_type_hints(cls)[name]
        assert "list[str]" in str(hint), (cls.__name__, name, hint)
        assert name in {f.name for f in dataclasses.fields(cls)}
    from agent.config import ConfigError, parse_settings
    with pytest.raises(ConfigError) as err:
        parse_settings({"summarizer": {"llama_server": {"command": "llama-server --port {port}; rm -rf /"}}})
    assert "summarizer.llama_server.command" in str(err.value)
