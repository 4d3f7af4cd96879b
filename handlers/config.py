"""`config/get`, `config/set`, `config/reset`: remote config lives in an overlay file.

The overlay survives a fleet tool rewriting the base file; `config/reset` drops it. Only the keys
the schema marks remote-tunable may be set (agent.config.remote); the fleet-wide topic is narrower.
A change is applied live (Services.apply) and the answer says which components restarted.
"""

from __future__ import annotations

from typing import Any

from agent.config import ConfigError, settings_to_dict
from agent.config.remote import tunable
from agent.config.store import RemoteForbidden, RemoteUnsafe
from agent.errors import RequestError
from agent.settings import DEVICE, FLEET, Settings
from handlers.base import Command, Request, Services


def config_of(sv: Services) -> dict[str, Any]:
    """The effective config, and which keys config/set may change from where (Node-RED and
    Home Assistant users see the rules without reading the source). Also the retained `config`."""
    return {"config": settings_to_dict(sv.store.settings, redact=True), "revision": sv.store.revision,
            "remote_tunable": tunable(DEVICE), "fleet_tunable": tunable(FLEET)}


def get(req: Request) -> dict[str, Any]:
    return config_of(req.services)


def set_(req: Request) -> dict[str, Any]:
    """`restart: true` applies the change, answers, then restarts (refused first when rate-limited)."""
    sv, scope = req.services, req.scope
    remote_config_allowed(sv.store.settings, scope)
    restart = req.body.get("restart", False)
    if restart:
        restart_allowed(sv, scope)
    answer = applied(sv, stored_overlay(sv, req.body["config"], scope))
    return {**answer, "restarting": True} if restart else answer


def restart_allowed(sv: Services, scope: str) -> None:
    """Refuse on the fleet-wide topic (one publish would restart every device at once), and with
    `rate_limited` while the last restart is less than a minute old."""
    if scope == FLEET:
        raise RequestError("restart is not accepted on the fleet-wide topic; restart devices one at a time "
                           "on their own topics", code="forbidden")
    wait = sv.restart_wait_s()
    if wait > 0:
        raise RequestError(f"restarted less than a minute ago; try again in {wait:.0f} s", code="rate_limited",
                           retry_after_s=round(wait, 1))


def _restart_after(req: Request, _data: Any) -> None:
    if req.body.get("restart"):
        req.services.restart()


def stored_overlay(sv: Services, partial: dict[str, Any], scope: str) -> Settings:
    """Merge `partial` into the overlay (validated, saved) or raise the answer's error."""
    try:
        return sv.store.set_overlay(partial, scope)
    except RemoteForbidden as exc:
        where = "the fleet-wide topic" if scope == FLEET else "MQTT"
        raise RequestError(f"{', '.join(exc.paths)}: cannot be changed over {where}; "
                           "only the local config file may set it; nothing was changed",
                           code="forbidden", keys=exc.paths) from None
    except ConfigError as exc:
        raise _invalid(exc) from None
    except RemoteUnsafe as exc:
        raise _invalid(exc, code=exc.code) from None
    except OSError as exc:   # disk full, read-only state_dir: the old overlay is untouched
        raise RequestError(f"cannot save the config change: {exc.strerror or exc}; nothing was changed",
                           code="storage_error") from None


def reset(req: Request) -> dict[str, Any]:
    sv = req.services
    remote_config_allowed(sv.store.settings, req.scope)
    try:
        new = sv.store.reset_overlay()
    except ConfigError as exc:
        raise _invalid(exc) from None
    return applied(sv, new)


def remote_config_allowed(settings: Settings, scope: str) -> None:
    if not settings.mqtt.remote_config:
        raise RequestError("remote config changes are disabled (mqtt.remote_config: false)", code="forbidden")
    if scope == FLEET and not settings.fleet.remote_config:
        raise RequestError("fleet-wide config changes are disabled (fleet.remote_config: false)",
                           code="forbidden")


def applied(sv: Services, new: Settings) -> dict[str, Any]:
    restarted = sv.apply(new)
    return {"revision": sv.store.revision, "restarted": restarted, "restart_needed": bool(restarted)}


def _invalid(exc: ConfigError | RemoteUnsafe, code: str = "invalid_config") -> RequestError:
    errors = [{"path": p.path, "message": p.message, **({"line": p.line} if p.line else {})} for p in exc.problems]
    if code == "invalid_config":
        return RequestError("; ".join(f"{p.path}: {p.message}" for p in exc.problems), code=code, errors=errors)
    return RequestError("; ".join(str(p) for p in exc.problems) + "; nothing was changed",
                        code=code, keys=[p.path for p in exc.problems], errors=errors)


COMMANDS = [
    Command("config/get", get),
    Command("config/set", set_, fields={"config": ((dict,), True), "restart": ((bool,), False)},
            after=_restart_after),
    Command("config/reset", reset),
]
