"""ServerProcess refuses before spawning: a missing command, a port already taken."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from agent.engines.supervisor import ServerProcess
from agent.errors import EngineError
from tests.support.fake_server import script, servers  # noqa: F401  (fixtures)


def test_missing_command_is_engine_unavailable(servers: list) -> None:
    server = ServerProcess("missing", ["/nonexistent/llama-server"], "http://127.0.0.1:1/health",
                           start_timeout_s=5)
    servers.append(server)
    with pytest.raises(EngineError) as caught:
        server.start()
    assert caught.value.code == "engine_unavailable" and "not found" in caught.value.message


def test_port_already_taken_is_refused_before_spawning(script: Path, servers: list) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = ServerProcess("fake", [sys.executable, str(script), str(port), "0", "-"],
                               f"http://127.0.0.1:{port}/health", start_timeout_s=5)
        servers.append(server)
        with pytest.raises(EngineError) as caught:
            server.start()
    assert caught.value.code == "engine_unavailable" and "already served" in caught.value.message
