"""`config/get`, `config/set`, `config/reset`: remote config lives in an overlay file.

The overlay survives a fleet tool rewriting the base file; `config/reset` drops it. Only the keys
the schema marks remote-tunable may be set (agent.config.remote); the fleet-wide topic is narrower.
"""

from __future__ import annotations

from typing import Any

from handlers.base import Command, Request


def get(req: Request) -> dict[str, Any]:
    return req.ctx.config_get()


def set_(req: Request) -> dict[str, Any]:
    return req.ctx.config_set(req.body["config"], req.scope)


def reset(req: Request) -> dict[str, Any]:
    return req.ctx.config_reset(req.scope)


COMMANDS = [
    Command("config/get", get),
    Command("config/set", set_, fields={"config": ((dict,), True)}),
    Command("config/reset", reset),
]
