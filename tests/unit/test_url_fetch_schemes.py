"""A fleet URL job's fetch refuses every scheme but http and https, before any connection."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("url", ["ftp://x/y.wav", "http://", "/local.wav"])
def test_fetch_refuses_other_schemes(url):
    from agent.errors import RequestError
    from agent.sources.fleet_fetch import fetch
    with pytest.raises(RequestError) as info:
        fetch(url, allow=["x"], max_bytes=1000, timeout_s=1)
    assert info.value.code == "bad_request"
