"""`restart` and `log_level`: operate a device with no shell open on it.

`restart` answers first (the dispatcher runs `after` once the answer reached the broker), then
the agent stops as on SIGTERM and comes back (agent/ops/restart.py); at most one restart a
minute, refused as `rate_limited` with `retry_after_s`. `log_level` changes the running level at
once; `persist: true` writes it to the overlay as `config/set {"log_level": ...}` would (same
rules: remote config on, and on the fleet-wide topic only with fleet.remote_config).
"""

from __future__ import annotations

from typing import Any

from agent.errors import RequestError
from agent.settings import Settings
from handlers.base import Command, Request
from handlers.config import applied, remote_config_allowed, restart_allowed, stored_overlay

LEVELS: tuple[str, ...] = Settings.__dataclass_fields__["log_level"].metadata["choices"]


def restart(req: Request) -> dict[str, Any]:
    restart_allowed(req.services, req.scope)
    return {"restarting": True}


def _restart_after(req: Request, _data: Any) -> None:
    req.services.restart()


def log_level(req: Request) -> dict[str, Any]:
    sv = req.services
    level = req.body["level"].upper()
    if level not in LEVELS:
        raise RequestError(f"level must be one of {', '.join(LEVELS)}", code="bad_request", field="level")
    persist = req.body.get("persist", False)
    if persist:
        remote_config_allowed(sv.store.settings, req.scope)
        applied(sv, stored_overlay(sv, {"log_level": level}, req.scope))
    sv.set_log_level(level)
    return {"level": level, "persisted": persist, "config_level": sv.store.settings.log_level}


COMMANDS = [
    Command("restart", restart, after=_restart_after),
    Command("log_level", log_level, fields={"level": ((str,), True), "persist": ((bool,), False)}),
]
