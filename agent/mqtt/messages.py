"""Envelope shared by every event and response: `ts` (ISO 8601 UTC) and `device_id`."""

from __future__ import annotations

import json
from typing import Any

from agent.timestamps import utc_iso


def envelope(device_id: str, body: dict[str, Any]) -> bytes:
    """Serialize a message body with the fields every consumer may rely on."""
    # backslashreplace: a str from a non-UTF-8 file name (surrogate escapes) becomes the JSON
    # escape "\udcff" instead of an exception that would lose the event.
    return json.dumps({**body, "ts": utc_iso(), "device_id": device_id},
                      separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")


def ok_answer(data: Any, transaction: str | None) -> dict[str, Any]:
    return {"status": "ok", "data": data, "transaction": transaction}


def error_answer(error: dict[str, Any], transaction: str | None) -> dict[str, Any]:
    return {"status": "error", "error": error, "transaction": transaction}
