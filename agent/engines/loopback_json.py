"""JSON over one kept HTTP connection to a server on this device (the llama.cpp server).

Why not `requests`, as the remote APIs use: it adds about 5.5 MB to the agent process, and with
whisper.cpp and llama.cpp in their own processes the agent must stay within 40 MB on a 512 MB
Pi. A loopback call needs no proxy, TLS, redirects or retries with backoff, only keep-alive and
the same error codes as `agent.engines.http_retry`, so the callers' handling stays the same.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from agent.errors import EngineError

#: What a kept-alive connection raises when the server closed it while idle (e.g. restarted).
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class LoopbackJson:
    """POST JSON, read JSON; one connection, reused while the server keeps it open."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        """`headers` go with every request (the server's key)."""
        self.host, self.port = host, port
        self._headers = dict(headers or {})
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: Any, timeout_s: float) -> Any:
        """The decoded answer. Raises EngineError: `engine_timeout` when no answer came within
        `timeout_s`; `engine_error` when the server cannot be reached (no `status` detail), or
        answered with an HTTP error (`status` detail) or with something that is not JSON."""
        url = f"http://{self.host}:{self.port}{path}"
        data = json.dumps(body).encode()
        reused = self._conn is not None
        try:
            try:
                status, raw = self._exchange(path, data, timeout_s)
            except _STALE:
                if not reused:
                    raise
                self.close()  # the kept connection had gone stale: one new connection
                status, raw = self._exchange(path, data, timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if isinstance(exc, (TimeoutError, socket.timeout)):
                raise EngineError(f"no answer from {url} within {timeout_s:g} s", code="engine_timeout") from exc
            raise EngineError(f"cannot reach {url}: {exc.__class__.__name__}", code="engine_error") from exc
        if status >= 400:
            text = " ".join(raw.decode("utf-8", "replace").split())[:200]
            raise EngineError(f"HTTP {status} from {url}" + (f": {text}" if text else ""),
                              code="engine_error", status=status)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise EngineError(f"malformed JSON from {url}: {raw[:120]!r}", code="engine_error") from exc

    def _exchange(self, path: str, data: bytes, timeout_s: float) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        conn = self._conn
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                       "User-Agent": "voice-agent", **self._headers})
        response = conn.getresponse()
        raw = response.read()
        if response.will_close:
            self.close()
        return response.status, raw

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
