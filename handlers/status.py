"""`state` and `stats`: what the agent is doing and how it has been doing.

`state_of` is also the retained `state` message and `stats_of` the periodic `telemetry`
(agent.app publishes them), so an answer and a retained copy can never disagree in shape.
"""

from __future__ import annotations

from typing import Any

from agent import __version__
from handlers.base import Command, Request, Services


def state_of(sv: Services) -> dict[str, Any]:
    return {"device_id": sv.store.settings.device_id, "version": __version__, "started_at": sv.run.started_at,
            "uptime_s": sv.run.uptime_s(), "paused": sv.run.paused, "listening": sv.microphone.on,
            # each running job with its elapsed time and last published progress fraction
            "jobs": {"running": sv.slot.running, "limit": sv.slot.limit, "active": sv.pipeline.progress.running()},
            "engines": sv.engines.describe(), "config_revision": sv.store.revision,
            "memory_level": sv.monitor.level,
            # the budget levels are computed against and which limit sets it (machine or cgroup);
            # usage figures are in telemetry, so the retained state does not change every sample
            "memory": {k: v for k, v in sv.monitor.budget().items() if k in ("budget_mb", "limit_source")},
            # kind -> level of every current alert: retained, so Home Assistant's problem sensors
            # have a value after a restart (a cleared `alert/<kind>` leaves nothing retained)
            "alerts": {kind: body.get("level") for kind, body in list(sv.alerts.items())}}


def stats_of(sv: Services) -> dict[str, Any]:
    """The one builder of both `request/stats` answers and `<root>/telemetry`."""
    d = sv.requests
    inbox = sv.inbox.current
    figures = sv.telemetry.collect({"uptime_s": sv.run.uptime_s(), "memory_level": sv.monitor.level,
                                    "alerts": sorted(sv.alerts)})
    pipeline, outbox, store = sv.pipeline, sv.outbox, sv.store
    return {
        **figures,
        "jobs": {"done": pipeline.done, "failed": pipeline.failed, "rejected": sv.run.rejected,
                 "running": sv.slot.running, "limit": sv.slot.limit},
        "requests": {"total": d.requests, "errors": d.errors, "busy": d.busy},
        "inbox": {"waiting": inbox.waiting_count() if inbox is not None else 0},
        "listen": sv.microphone.stats(),
        "fleet": sv.fleet_stats(),
        "outbox": {"queued": outbox.count, "bytes": outbox.size_bytes, "stored": outbox.stored,
                   "published": sv.publisher.published, "dropped": outbox.dropped},
        "caches": {"config": {"hits": store.hits, "misses": store.misses},
                   "transcripts": pipeline.transcripts.stats(),
                   "summaries": pipeline.summary.summaries.stats(), "vad": sv.vad_cache_stats()},
    }


def state(req: Request) -> dict[str, Any]:
    return state_of(req.services)


def stats(req: Request) -> dict[str, Any]:
    return stats_of(req.services)


COMMANDS = [Command("state", state), Command("stats", stats)]
