"""Wyoming frames are bounded before they are read, and the allow list matches addresses as the
socket reports them (IPv4, IPv6, IPv4-mapped IPv6). The server around them: tests/e2e/test_wyoming_server.py."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("wyoming")

from agent.sources.wyoming_frames import MAX_DATA_BYTES, MAX_PAYLOAD_BYTES, FrameError, read_event  # noqa: E402
from agent.sources.wyoming_server import AllowList, RateLimitedLog  # noqa: E402


def read(data: bytes):
    async def go():
        reader = asyncio.StreamReader(limit=1024)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_event(reader)
    return asyncio.run(go())


def frame(header: dict, rest: bytes = b"") -> bytes:
    return json.dumps(header).encode() + b"\n" + rest


def test_a_frame_with_data_and_payload_is_read_whole():
    data = json.dumps({"rate": 16000}).encode()
    event = read(frame({"type": "audio-chunk", "data": {"width": 2}, "data_length": len(data),
                        "payload_length": 4}, data + b"\x01\x02\x03\x04"))
    assert event.type == "audio-chunk" and event.data == {"width": 2, "rate": 16000} and event.payload == b"\x01\x02\x03\x04"


def test_end_of_stream_between_frames_is_none_and_inside_one_is_an_error():
    assert read(b"") is None
    with pytest.raises(FrameError, match="inside a header"):
        read(b'{"type": "ping"')
    with pytest.raises(FrameError, match="inside a frame"):
        read(frame({"type": "audio-chunk", "payload_length": 10}, b"abc"))


@pytest.mark.parametrize("header, message", [
    ({"type": "x", "payload_length": MAX_PAYLOAD_BYTES + 1}, "over the bound"),
    ({"type": "x", "data_length": MAX_DATA_BYTES + 1}, "over the bound"),
    ({"type": "x", "payload_length": -1}, "malformed header"),
    ({"type": "x", "payload_length": True}, "malformed header"),
    ({"type": "x", "payload_length": "10"}, "malformed header"),
    ({"type": 5}, "no event type"),
    ({"data": {}}, "no event type"),
    ({"type": "x", "data": [1]}, "data is not an object"),
])
def test_headers_outside_the_protocol_are_refused_before_any_body_is_read(header, message):
    with pytest.raises(FrameError, match=message):
        read(frame(header))   # no body follows: a bounded reader never waits for it


def test_header_line_over_the_stream_limit_and_non_json_are_refused():
    with pytest.raises(FrameError, match="header line over the bound"):
        read(b"{" + b" " * 5000 + b"}\n")
    with pytest.raises(FrameError, match="not JSON"):
        read(b"hello\n")
    with pytest.raises(FrameError, match="malformed data"):
        read(frame({"type": "x", "data_length": 3}, b"[1]"))


def test_allow_list_matches_addresses_and_networks():
    allow = AllowList(["127.0.0.1", "192.168.1.0/24", "::1"])
    assert "127.0.0.1" in allow and "::ffff:127.0.0.1" in allow and "::1" in allow
    assert "192.168.1.77" in allow and "192.168.2.1" not in allow
    assert "127.0.0.2" not in allow and "not-an-address" not in allow and "" not in allow


def test_rate_limited_log_says_how_many_it_left_out(caplog):
    caplog.set_level("INFO", logger="agent.sources.wyoming_server")
    limited = RateLimitedLog(every_s=0.05)
    for _ in range(5):
        limited.info("gone %s", "x")
    import time
    time.sleep(0.06)
    limited.info("gone %s", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["gone x", "gone y (4 more like this in the last minute)"], lines
