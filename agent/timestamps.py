"""The one timestamp format on the wire: ISO 8601 UTC with milliseconds and a `Z` (`ts` of every
message, `started_at` of the agent and of a running job)."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def utc_iso(epoch_s: float | None = None) -> str:
    """`epoch_s` (default: now) as e.g. 2026-12-02T03:04:05.678Z."""
    moment = datetime.fromtimestamp(time.time() if epoch_s is None else epoch_s, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
