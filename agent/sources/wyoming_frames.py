"""Wyoming frames off the network, bounded before they are read.

A Wyoming event is one JSON header line, then `data_length` bytes of JSON data, then
`payload_length` bytes of payload (audio). The `wyoming` library's own reader trusts both lengths
and reads whatever they say into memory; a client is unauthenticated, so here each size is
checked against its bound before a byte of it is read, and a header that is not the protocol's
shape raises `FrameError`: the server closes that connection with one log line.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

#: Bounds of one frame. Home Assistant's largest frames are audio chunks of a few KiB and an
#: `info` / `synthesize` of a few hundred bytes of JSON.
MAX_HEADER_BYTES = 16 * 1024
MAX_DATA_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024


class FrameError(Exception):
    """A frame over a bound or a malformed header: the connection is closed."""


def _length(header: dict[str, Any], key: str, bound: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError(f"malformed header: {key} {value!r}")
    if value > bound:
        raise FrameError(f"{key} {value} is over the bound of {bound} bytes")
    return value


async def read_event(reader: asyncio.StreamReader) -> Any:
    """The next event (a `wyoming.event.Event`), None at a clean end of the stream, or FrameError."""
    from wyoming.event import Event

    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("connection closed inside a header") from None
    except asyncio.LimitOverrunError:
        raise FrameError(f"header line over the bound of {MAX_HEADER_BYTES} bytes") from None
    try:
        header = json.loads(line)
    except ValueError:
        raise FrameError("malformed header: not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise FrameError("malformed header: no event type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise FrameError("malformed header: data is not an object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise FrameError("malformed data: not an object")
            data = {**data, **extra}
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise FrameError("connection closed inside a frame") from None
    except ValueError:
        raise FrameError("malformed data: not JSON") from None
    return Event(type=header["type"], data=data, payload=payload)


async def write_event(event: Any, writer: asyncio.StreamWriter) -> None:
    """The library's writer: its framing is what Home Assistant reads."""
    from wyoming.event import async_write_event

    await async_write_event(event, writer)
