"""A tiny threaded HTTP server that stands in for remote APIs in tests.

Why: engines must be tested against the real wire protocol (multipart bodies, headers,
status codes, Retry-After, slow answers) without network access or vendor SDK mocks.
A route table maps (method, path) to a callable that receives the recorded request and
returns a reply; every request is recorded so tests can assert on what was sent.

    with HTTPStub({("POST", "/v1/x"): lambda req: json_reply({"ok": True})}) as stub:
        requests.post(stub.url + "/v1/x", json={})
        assert stub.requests[0].json() == {}
"""

from __future__ import annotations

import argparse
import email.parser
import io
import email.policy
import json
import signal
import threading
import time
import wave
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Union


@dataclass
class Part:
    """One field of a multipart/form-data body."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def multipart(self) -> dict[str, Part]:
        """Parse a multipart/form-data body; raises ValueError when it is not one."""
        return parse_multipart(self.header("Content-Type") or "", self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering: lets tests provoke client timeouts


Handler = Callable[[RecordedRequest], Union[Reply, tuple, dict, list, str, bytes]]


def json_reply(obj: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status=status, body=json.dumps(obj).encode(), headers={"Content-Type": "application/json", **headers})


def sequence(*replies: Union[Reply, Handler]) -> Handler:
    """A handler answering with each reply in turn, repeating the last one forever.

    Entries may be Reply objects or handlers (called with the request).
    """
    lock = threading.Lock()
    state = {"i": 0}

    def handler(request: RecordedRequest) -> Reply:
        with lock:
            index = min(state["i"], len(replies) - 1)
            state["i"] += 1
        reply = replies[index]
        return reply(request) if callable(reply) else reply

    return handler


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """Decode multipart/form-data with the stdlib email parser (cgi is gone in Python 3.13)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise ValueError(f"not multipart/form-data: {content_type!r}")
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    if not message.is_multipart():
        raise ValueError("body is not a valid multipart message")
    parts: dict[str, Part] = {}
    for item in message.iter_parts():
        disposition = item.get("Content-Disposition", "")
        if not str(disposition).lower().startswith("form-data"):
            raise ValueError(f"part without form-data disposition: {disposition!r}")
        name = item.get_param("name", header="content-disposition")
        if name is None:
            raise ValueError("form-data part without a name")
        payload = item.get_payload(decode=True) or b""
        filename = item.get_filename()
        ctype = item.get("Content-Type")
        parts[str(name)] = Part(name=str(name), data=payload, filename=filename,
                                content_type=str(ctype) if ctype else None)
    return parts


def _normalise(result: Any) -> Reply:
    if isinstance(result, Reply):
        return result
    if isinstance(result, tuple):  # (status, body) or (status, body, headers)
        status, body, *rest = result
        return _with_body(Reply(status=status, headers=dict(rest[0]) if rest else {}), body)
    return _with_body(Reply(), result)


def _with_body(reply: Reply, body: Any) -> Reply:
    if isinstance(body, (dict, list)):
        reply.headers.setdefault("Content-Type", "application/json")
        reply.body = json.dumps(body).encode()
    elif isinstance(body, str):
        reply.headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        reply.body = body.encode()
    else:
        reply.body = body or b""
    return reply


class HTTPStub:
    """A loopback HTTP server on an ephemeral port with a mutable route table.

    Unknown routes answer 404. A handler that raises records the exception in `errors` and
    answers 400 for an AssertionError (the request broke the protocol) or 500 otherwise.
    """

    def __init__(self, routes: dict[tuple[str, str], Handler] | None = None) -> None:
        self.routes: dict[tuple[str, str], Handler] = dict(routes or {})
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> "HTTPStub":
        """Listen on 127.0.0.1:`port` (0 = any free port) on a daemon thread."""
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass  # keep pytest output clean

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                request = RecordedRequest(self.command, path, query, dict(self.headers.items()), body)
                with stub._lock:
                    stub.requests.append(request)
                    handler = stub.routes.get((self.command, path))
                if handler is None:
                    reply = Reply(404, b"no route", {"Content-Type": "text/plain"})
                else:
                    try:
                        reply = _normalise(handler(request))
                    except Exception as exc:  # noqa: BLE001 - reported to the test via `errors`
                        with stub._lock:
                            stub.errors.append(exc)
                        # A failed assert means the client sent a wrong request: 400, which no
                        # client retries; anything else is a stub bug: 500.
                        status = 400 if isinstance(exc, AssertionError) else 500
                        reply = Reply(status, f"stub handler failed: {exc!r}".encode(), {"Content-Type": "text/plain"})
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                data = reply.body if isinstance(reply.body, bytes) else _with_body(Reply(), reply.body).body
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests); nothing to answer

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True  # a sleeping handler must not block stop()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="http-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "HTTPStub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "stub not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        with self._lock:
            self.routes[(method.upper(), path)] = handler

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def reset(self, routes: Iterable[tuple[tuple[str, str], Handler]] | None = None) -> None:
        with self._lock:
            self.requests.clear()
            self.errors.clear()
            if routes is not None:
                self.routes = dict(routes)


# -- protocol stand-ins ----------------------------------------------------------------------


def check_wav(data: bytes) -> tuple[int, int, int, int]:
    """Assert `data` is a readable PCM WAV; return (channels, sample width, rate, frames)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", "not a RIFF/WAVE file"
    with wave.open(io.BytesIO(data)) as wav:
        params = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes())
        frames = wav.readframes(params[3])
    assert len(frames) == params[0] * params[1] * params[3], "WAV data shorter than its header says"
    return params


def whisper_inference_handler(text: str = "hello from the stub") -> Handler:
    """whisper.cpp server's `POST /inference`: multipart `file` (a WAV) + `response_format=json`."""

    def handler(request: RecordedRequest) -> Reply:
        parts = request.multipart()
        assert "file" in parts, f"no 'file' field (got {sorted(parts)})"
        assert parts["file"].filename, "the 'file' field must be a file upload"
        channels, width, rate, _ = check_wav(parts["file"].data)
        assert (channels, width, rate) == (1, 2, 16000), f"expected 16 kHz mono 16-bit, got {(channels, width, rate)}"
        assert "response_format" in parts and parts["response_format"].text == "json", "response_format must be json"
        return json_reply({"text": text})

    return handler


def whisper_server_routes(text: str = "hello from the stub") -> dict[tuple[str, str], Handler]:
    """Routes of a minimal whisper.cpp server: /health, / and /inference."""
    return {
        ("GET", "/health"): lambda request: json_reply({"status": "ok"}),
        ("GET", "/"): lambda request: Reply(200, b"<html>whisper.cpp server</html>", {"Content-Type": "text/html"}),
        ("POST", "/inference"): whisper_inference_handler(text),
    }


PRESETS: dict[str, Callable[[argparse.Namespace], dict[tuple[str, str], Handler]]] = {
    "whisper-server": lambda args: whisper_server_routes(args.text),
}


def main(argv: list[str] | None = None) -> None:
    """Run a preset as a separate process (a stand-in for a server binary a supervisor starts).

    Self-contained (stdlib only) so it runs as a plain script: `python http_stub.py --port N`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="whisper-server")
    parser.add_argument("--text", default="hello from the stub")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before listening")
    args = parser.parse_args(argv)
    time.sleep(args.startup_delay)
    stub = HTTPStub(PRESETS[args.preset](args))
    stub.start(port=args.port)
    print(f"listening on {stub.url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    stub.stop()


if __name__ == "__main__":
    main()
