"""A finished job's record -> the fields its answer carries, for `request/transcribe` and fleet jobs.

One mapping, so a requester and a fleet controller read the same names for the same facts
(docs/mqtt-api.md); each caller adds only its own envelope fields around it (`job_id` first for a
request; `status` first and `agent_job_id` last for a fleet job), keeping the key order stable.
"""

from __future__ import annotations

from typing import Any


def answer_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {"text": record["transcript"], "language": record["language"], "audio_s": record["audio_s"],
            "summary": record["summary"], "engines": record["engines"], "timings_ms": record["timings_ms"]}
