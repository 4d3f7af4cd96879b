"""`config/get`, `config/set`, `config/reset`: remote config lives in an overlay file.

The overlay survives a fleet tool rewriting the base file; `config/reset` drops it.
"""

from __future__ import annotations

from typing import Any

from handlers.base import Command, Request


def get(req: Request) -> dict[str, Any]:
    return req.ctx.config_get()


def set_(req: Request) -> dict[str, Any]:
    return req.ctx.config_set(req.body["config"])


def reset(req: Request) -> dict[str, Any]:
    return req.ctx.config_reset()


COMMANDS = [
    Command("config/get", get),
    Command("config/set", set_, fields={"config": ((dict,), True)}),
    Command("config/reset", reset),
]
