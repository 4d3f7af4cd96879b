"""A tiny HTTP server script for ServerProcess tests: answers 503 ("loading") for a set time, then
200, and can fork a grandchild so a test can prove that stopping leaves no process behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engines.supervisor import ServerProcess

SERVER_SCRIPT = r'''
import http.server, subprocess, sys, time
port, loading_s, child_pid_file = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready_at = time.monotonic() + loading_s
if child_pid_file != "-":
    child = subprocess.Popen(["sleep", "300"])  # a grandchild that must not outlive the server
    open(child_pid_file, "w").write(str(child.pid))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if time.monotonic() >= ready_at else 503
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

print("serving on", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """SERVER_SCRIPT written to a file a test can start."""
    path = tmp_path / "fake_server.py"
    path.write_text(SERVER_SCRIPT)
    return path


@pytest.fixture
def servers():
    """Every ServerProcess a test makes is stopped afterwards, even when the test fails."""
    made: list[ServerProcess] = []
    yield made
    for server in made:
        server.stop(grace_s=1.0)
