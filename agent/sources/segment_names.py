"""The name of a spooled microphone segment, which carries what its job needs to say about it.

A segment is `<segment_id>.wav`; one that followed a wake word is
`<segment_id>.wake-<model>-<permille>.wav`, so the wake that started it survives in the spool
across a restart without a second file to keep in step. The name is data, never a path: the
model is a schema-checked name ([A-Za-z0-9_-]) and the probability a number, and anything that
does not parse exactly is treated as a plain segment.
"""

from __future__ import annotations

import re
from typing import Any

_WAKE = re.compile(r"^(?P<segment>[^.]+)\.wake-(?P<model>[A-Za-z0-9_-]{1,64})-(?P<permille>\d{1,4})$")


def segment_file(segment_id: str, wake: dict[str, Any] | None = None) -> str:
    """The spool file name of a segment (`wake`: {"model", "probability"} of the wake before it)."""
    if wake is None:
        return f"{segment_id}.wav"
    return f"{segment_id}.wake-{wake['model']}-{round(float(wake['probability']) * 1000):d}.wav"


def parse_segment_file(name: str) -> tuple[str, dict[str, Any] | None]:
    """(segment id, wake or None) of a spool file name."""
    stem = name.rsplit(".", 1)[0] if name.endswith(".wav") else name
    m = _WAKE.match(stem)
    if m is None or int(m["permille"]) > 1000:
        return stem, None
    return m["segment"], {"model": m["model"], "probability": int(m["permille"]) / 1000}
