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
from tests.support.broker_access import refused_offline


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


# Three refusals of the same shape: the broker or OpenSSL refuses the agent's TLS link, the
# agent logs a clear error and retries; once the operator fixes the one setting at fault, the
# running agent connects (no restart).
REFUSALS = {
    "missing-client-certificate": dict(require_certificate=True, other_name=False, ca="ca",
                                       error=r"mqtt.*certificate required",
                                       fix=lambda pki: {"cert_file": str(pki.client_cert),
                                                        "key_file": str(pki.client_key)}),
    "wrong-ca": dict(require_certificate=False, other_name=False, ca="wrong_ca",
                     error=r"mqtt: cannot connect .*certificate verify failed",
                     fix=lambda pki: {"ca_file": str(pki.ca)}),
    "hostname-mismatch": dict(require_certificate=False, other_name=True, ca="ca",
                              error=r"mqtt: cannot connect .*([Hh]ostname mismatch|not valid for)",
                              fix=lambda pki: {"insecure": True}),   # explicitly opted in
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_tls_refused_with_a_clear_error_retried_and_fixed_live(tmp_path, pki, case):
    refusal = REFUSALS[case]
    broker, plain = _tls_broker(tmp_path / "broker", pki, require_certificate=refusal["require_certificate"],
                                other_name=refusal["other_name"])
    probe = Probe(broker.host, plain)
    agent = AgentProcess(tmp_path / "agent", broker.port,
                         {"mqtt": {"tls": {"ca_file": str(getattr(pki, refusal["ca"]))}}})
    try:
        agent.start(probe, wait_online=False)
        failures = refused_offline(agent, probe, refusal["error"], count=2)
        assert "Traceback" not in agent.log(), agent.log()[-3000:]
        print("\n".join(failures[:2]))
        agent.config["mqtt"]["tls"].update(refusal["fix"](pki))
        agent.write_config(agent.config)
        probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "online", timeout=20,
                       what=f"online after the fix of {case}")
        assert probe.request(agent.root, "ping")["data"] == {"pong": True}
    finally:
        agent.stop()
        probe.close()
        broker.stop()
