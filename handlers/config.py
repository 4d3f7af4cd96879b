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
    sv, scope = req.services, req.scope
    _remote_config_allowed(sv.store.settings, scope)
    try:
        new = sv.store.set_overlay(req.body["config"], scope)
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
    return _applied(sv, new)


def reset(req: Request) -> dict[str, Any]:
    sv = req.services
    _remote_config_allowed(sv.store.settings, req.scope)
    try:
        new = sv.store.reset_overlay()
    except ConfigError as exc:
        raise _invalid(exc) from None
    return _applied(sv, new)


def _remote_config_allowed(settings: Settings, scope: str) -> None:
    if not settings.mqtt.remote_config:
        raise RequestError("remote config changes are disabled (mqtt.remote_config: false)", code="forbidden")
    if scope == FLEET and not settings.fleet.remote_config:
        raise RequestError("fleet-wide config changes are disabled (fleet.remote_config: false)",
                           code="forbidden")


def _applied(sv: Services, new: Settings) -> dict[str, Any]:
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
    Command("config/set", set_, fields={"config": ((dict,), True)}),
    Command("config/reset", reset),
]
