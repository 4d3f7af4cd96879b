"""TLS to a real Mosquitto: verified server and client certificates; a missing client certificate,
a wrong CA and a hostname mismatch are refused by OpenSSL with a clear error, and retried.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.broker import Broker, free_port
from tests.support.probe import Probe
from tests.support.tls import Pki, make_pki
from tests.support.broker_access import never_online, wait_log


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
        never_online(agent, probe, 4)
        failures = wait_log(agent, r"mqtt.*certificate required", count=2)
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
        never_online(agent, probe, 4)
        failures = wait_log(agent, r"mqtt: cannot connect .*certificate verify failed", count=2)
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
        never_online(agent, probe, 3)
        failures = wait_log(agent, r"mqtt: cannot connect .*([Hh]ostname mismatch|not valid for)", count=1)
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
