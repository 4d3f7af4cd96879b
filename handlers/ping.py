"""`ping`: the cheapest liveness check, answered inline."""

from __future__ import annotations

from typing import Any

from handlers.base import Command, Request


def ping(req: Request) -> dict[str, Any]:
    return {"pong": True}


COMMANDS = [Command("ping", ping)]
