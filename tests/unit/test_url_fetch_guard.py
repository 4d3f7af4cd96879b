"""Fleet URL fetches cannot reach what the operator did not list (server-side request forgery).

In process: the fetch against a canary HTTP server on loopback that records every request; a
refused URL must leave it untouched. The same through a running agent is in
tests/e2e/test_fleet_url_jobs.py.
"""

from __future__ import annotations

import pytest

from agent.errors import RequestError
from agent.sources.fleet_fetch import fetch, internal
from tests.support.http_stub import HTTPStub, Reply
from tests.support.wavs import tone_wav


WAV = tone_wav(0.3, freq=440)


def canary() -> HTTPStub:
    return HTTPStub({("GET", "/a.wav"): lambda r: Reply(200, WAV, {"Content-Type": "audio/wav"})})


def test_redirect_to_another_host_is_not_followed():
    with canary() as target:
        port = target.url.rsplit(":", 1)[1]
        redirects = {("GET", "/other"): lambda r: Reply(302, b"", {"Location": f"http://localhost:{port}/a.wav"}),
                     ("GET", "/same"): lambda r: Reply(302, b"", {"Location": "/a.wav"}),
                     ("GET", "/a.wav"): lambda r: Reply(200, WAV)}
        with HTTPStub(redirects) as stub:
            with pytest.raises(RequestError) as info:
                fetch(f"{stub.url}/other", allow=["127.0.0.1", "localhost"], max_bytes=10**6, timeout_s=5)
            assert info.value.code == "forbidden" and "another host" in info.value.message
            assert target.requests == []
            # a redirect on the same host is followed
            assert fetch(f"{stub.url}/same", allow=["127.0.0.1"], max_bytes=10**6, timeout_s=5) == WAV


def test_size_bound_stays():
    with canary() as stub:
        with pytest.raises(RequestError) as info:
            fetch(f"{stub.url}/a.wav", allow=["127.0.0.1"], max_bytes=len(WAV) - 1, timeout_s=5)
        assert info.value.code == "payload_too_large"


def test_connection_that_lands_on_loopback_is_refused_even_if_the_name_looked_public(monkeypatch):
    """DNS rebinding: the check before connecting saw a public address, the socket landed on
    loopback. The check on the connected socket refuses it before any request is sent."""
    import agent.sources.fleet_fetch as ff
    monkeypatch.setattr(ff, "_check_addresses", lambda host, port, exact: None)
    with canary() as stub:
        port = stub.url.rsplit(":", 1)[1]
        with pytest.raises(RequestError) as info:
            fetch(f"http://127.0.0.1:{port}/a.wav", allow=["*.0.0.1"], max_bytes=10**6, timeout_s=5)
        assert info.value.code == "forbidden", info.value.as_dict()
        assert stub.requests == []


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1", True), ("10.1.2.3", True), ("192.168.1.20", True), ("172.16.0.9", True),
    ("169.254.10.1", True), ("100.64.0.7", True), ("0.0.0.0", True), ("224.0.0.251", True),
    ("::1", True), ("fe80::1", True), ("fd00::5", True), ("::ffff:127.0.0.1", True),
    ("93.184.216.34", False), ("2606:2800:220:1:248:1893:25c8:1946", False)])
def test_internal_addresses(address, expected):
    assert internal(address) is expected


def test_unlisted_and_empty_allow_lists_refuse_before_any_connection():
    with canary() as stub:
        for allow in ([], ["example.org"]):
            with pytest.raises(RequestError) as info:
                fetch(f"{stub.url}/a.wav", allow=allow, max_bytes=10**6, timeout_s=5)
            assert info.value.code == "forbidden"
        assert stub.requests == []
