"""`state` and `stats`: what the agent is doing and how it has been doing."""

from __future__ import annotations

from typing import Any

from handlers.base import Command, Request


def state(req: Request) -> dict[str, Any]:
    return req.ctx.state()


def stats(req: Request) -> dict[str, Any]:
    return req.ctx.stats()


COMMANDS = [Command("state", state), Command("stats", stats)]
