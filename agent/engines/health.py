"""Loopback checks on a local model server: what its health URL answers, and whether its port is taken.

`agent.engines.supervisor` uses them to decide whether a kept server is usable, and whether it
may start one at all (a port someone else already serves would answer our health checks).
"""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

#: One health probe may take this long; a loaded Pi answers loopback far faster.
PROBE_TIMEOUT_S = 5.0


def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S, headers: dict[str, str] | None = None) -> int | None:
    """GET `url` (with `headers`, e.g. the server's key) and return the status code, or None when
    nothing answers in time.

    Uses http.client rather than requests on purpose: proxy environment variables must never
    route a loopback health check through a corporate proxy.
    """
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        connection.request("GET", target, headers={"Connection": "close", **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def port_open(url: str) -> bool:
    """Whether something already listens where the server is about to bind."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
