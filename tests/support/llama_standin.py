"""A STAND-IN for llama.cpp's HTTP server, for tests only. It does not run a model.

Why: the restart, hang and health-route tests need a server process that answers at once and that
a test can SIGSTOP or SIGKILL; the real Gemma server takes seconds per answer on 2 shared cores
(its own suite, tests/e2e/test_llama_summarizer.py, marks those tests slow). This program speaks
the part of the OpenAI chat-completions protocol the agent's `llama_server` engine uses:

    llama_standin.py --port N [--pidfile FILE] [--no-health]

- `GET /health` answers `{"status": "ok"}`; with `--no-health` it answers 404, as
  llama-cpp-python's server does, so the engine must fall back to `GET /v1/models`;
- `GET /v1/models` lists one model;
- `POST /v1/chat/completions` answers `stand-in summary: <the prompt's last three words>`, so a test
  can tell that the transcript reached the server.

`--pidfile` appends the process id, one per start, so a test can count restarts.
Self-contained (stdlib only): it runs as a plain script under the agent's supervisor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY_PREFIX = "stand-in summary: "


def llama_standin_command(*, pidfile: str | os.PathLike | None = None, health: bool = True) -> list[str]:
    """The `llama_server.command` setting that runs this stand-in (`{port}` filled by the agent)."""
    command = [sys.executable, os.path.abspath(__file__), "--port", "{port}"]
    if pidfile is not None:
        command += ["--pidfile", str(pidfile)]
    if not health:
        command.append("--no-health")
    return command


def reply_for(prompt: str) -> str:
    """The stand-in's summary of `prompt`: tests compare against this."""
    return REPLY_PREFIX + " ".join(prompt.split()[-3:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stand-in llama.cpp server (tests only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pidfile")
    parser.add_argument("--no-health", action="store_true", help="404 on /health, like llama-cpp-python")
    args = parser.parse_args(argv)
    if args.pidfile:
        with open(args.pidfile, "a") as f:
            f.write(f"{os.getpid()}\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def send_json(self, status: int, obj: object) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health" and not args.no_health:
                self.send_json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})
            else:
                self.send_json(404, {"error": "no route"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_json(200, {"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply_for(body["messages"][0]["content"])},
                 "finish_reason": "stop"}]})

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
