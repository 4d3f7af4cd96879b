"""Download a shared job's `url` audio, only from hosts the operator listed (`fleet.url_allow`).

A job's URL is attacker-written: without a list, anyone who may publish a job could make the
device fetch from its own loopback or its LAN (server-side request forgery). So:

* URL jobs are refused (`forbidden`) unless the host is in `fleet.url_allow`: an exact host name
  or address (`files.example.com`, `192.168.1.20`), or `*.example.com` for any subdomain.
* An address that is not global (loopback, link-local, private, CGNAT, reserved, multicast) is
  refused unless the host is listed exactly: a wildcard entry never reaches the LAN. The check
  runs on every address the name resolves to before connecting, and again on the address the
  socket actually connected to, so a DNS answer that changes in between (rebinding) gains nothing.
* Redirects are followed only to the same scheme, host and port (at most MAX_REDIRECTS); one to
  another host is refused (`forbidden`). Proxies and .netrc from the environment are ignored.
* The body is bounded by `max_bytes` and the whole download by `timeout_s`. A socket timeout
  bounds only each wait for bytes, and a server that sends a Content-Length and then one byte a
  second never lets a 64 KiB read return: a timer shuts every socket of the download down at
  its deadline, whatever the download is doing then (connecting, headers, body).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any, Sequence
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from agent.errors import RequestError

MAX_REDIRECTS = 3


def _host(url: str) -> tuple[str, Any]:
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port   # raises ValueError on a port that is not a number
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise RequestError("'url' must be an http:// or https:// URL", code="bad_request", field="url")
    return host.rstrip(".").lower(), parts


def _listed(host: str, allow: Sequence[str]) -> tuple[bool, bool]:
    """(allowed at all, listed exactly)."""
    entries = [a.strip().rstrip(".").lower().strip("[]") for a in allow]
    if host in entries:
        return True, True
    return any(e.startswith("*.") and host.endswith(e[1:]) for e in entries), False


def internal(address: str) -> bool:
    """Not a public unicast address: the device's own machine or network, or nothing routable."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow: Sequence[str]) -> bool:
    """Refuse a URL whose host is not listed (before a job takes a slot). Returns whether
    internal addresses are allowed for it (the host is listed exactly)."""
    host, _ = _host(url)
    if not allow:
        raise RequestError("URL jobs are off on this device (fleet.url_allow is empty); send audio_b64",
                           code="forbidden", field="url")
    allowed, exact = _listed(host, allow)
    if not allowed:
        raise RequestError(f"host {host!r} is not in fleet.url_allow", code="forbidden", field="url")
    return exact


def _check_addresses(host: str, port: int, exact: bool) -> None:
    if exact:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RequestError(f"fetching the audio failed: cannot resolve {host!r}", code="fetch_failed") from None
    for info in infos:
        if internal(str(info[4][0])):
            raise RequestError(f"host {host!r} resolves to a loopback, link-local or private address; "
                               "list it exactly in fleet.url_allow to allow that", code="forbidden", field="url")


class _Refused(OSError):
    pass


class _Deadline:
    """Shuts down every socket of one download when its time is up (see the module docstring).

    `shutdown` (not `close`) is what wakes a thread blocked in `recv` on Linux; the download then
    fails at once, and `fetch` reports the deadline.
    """

    def __init__(self, timeout_s: float) -> None:
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.expired = False
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _checked(base: type, exact: bool, deadline: _Deadline) -> type:
    class Checked(base):   # type: ignore[misc, valid-type]
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            try:
                peer = sock.getpeername()[0]
            except OSError:
                peer = None
            if not exact and (peer is None or internal(str(peer))):
                sock.close()
                raise _Refused(f"connected to an internal address ({peer})")
            deadline.add(sock)
            return sock
    return Checked


class _Adapter(HTTPAdapter):
    """Every connection is checked where it actually landed, and bounded by the download's deadline."""

    def __init__(self, exact: bool, deadline: _Deadline) -> None:
        self._exact = exact
        self._deadline = deadline
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http = type("CheckedHTTPPool", (HTTPConnectionPool,),
                    {"ConnectionCls": _checked(HTTPConnection, self._exact, self._deadline)})
        https = type("CheckedHTTPSPool", (HTTPSConnectionPool,),
                     {"ConnectionCls": _checked(HTTPSConnection, self._exact, self._deadline)})
        self.poolmanager.pool_classes_by_scheme = {"http": http, "https": https}


def fetch(url: str, *, allow: Sequence[str], max_bytes: int, timeout_s: float) -> bytes:
    """GET `url` under the rules above, refusing more than `max_bytes` and taking at most `timeout_s`."""
    exact = check_url(url, allow)
    with _Deadline(timeout_s) as cut:
        data = _fetch(url, exact, max_bytes, timeout_s, cut)
    if cut.expired:   # also a body cut short without an error (a server that sent no length)
        raise _too_slow(timeout_s)
    return data


def _fetch(url: str, exact: bool, max_bytes: int, timeout_s: float, cut: _Deadline) -> bytes:
    deadline = time.monotonic() + timeout_s
    with requests.Session() as session:
        session.trust_env = False
        adapter = _Adapter(exact, cut)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        for _ in range(MAX_REDIRECTS + 1):
            host, parts = _host(url)
            _check_addresses(host, parts.port or (443 if parts.scheme == "https" else 80), exact)
            left = max(0.1, deadline - time.monotonic())
            try:
                with session.get(url, stream=True, timeout=left, allow_redirects=False) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("Location", ""))
                        new = urlsplit(target)
                        if (new.scheme, new.hostname, new.port) != (parts.scheme, parts.hostname, parts.port):
                            raise RequestError(f"the URL redirects to another host ({new.hostname}); "
                                               "redirects are followed only on the same host",
                                               code="forbidden", field="url")
                        url = target
                        continue
                    return _body(response, max_bytes, timeout_s, deadline)
            except requests.RequestException as exc:
                if cut.expired:
                    raise _too_slow(timeout_s) from None
                if isinstance(exc.__context__, _Refused) or "internal address" in str(exc):
                    raise RequestError(f"host {host!r} connected to a loopback, link-local or private address",
                                       code="forbidden", field="url") from None
                raise RequestError(f"fetching the audio failed: {type(exc).__name__}", code="fetch_failed") from None
        raise RequestError(f"the URL redirects more than {MAX_REDIRECTS} times", code="fetch_failed")


def _body(response: requests.Response, max_bytes: int, timeout_s: float, deadline: float) -> bytes:
    if response.status_code != 200:
        raise RequestError(f"fetching the audio failed: HTTP {response.status_code}",
                           code="fetch_failed", http_status=response.status_code)
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise RequestError(f"the audio at the URL is {length} bytes, more than {max_bytes}", code="payload_too_large")
    data = bytearray()
    for chunk in response.iter_content(chunk_size=65536):
        data += chunk
        if len(data) > max_bytes:
            raise RequestError(f"the audio at the URL is more than {max_bytes} bytes", code="payload_too_large")
        if time.monotonic() > deadline:
            raise _too_slow(timeout_s)
    return bytes(data)


def _too_slow(timeout_s: float) -> RequestError:
    return RequestError(f"fetching the audio took longer than {timeout_s:g} s", code="fetch_failed")
