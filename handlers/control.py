"""`pause` and `resume`: stop and restart taking work (inbox files wait on disk)."""

from __future__ import annotations

from typing import Any

from handlers.base import Command, Request


def pause(req: Request) -> dict[str, Any]:
    return req.ctx.set_paused(True)


def resume(req: Request) -> dict[str, Any]:
    return req.ctx.set_paused(False)


COMMANDS = [Command("pause", pause), Command("resume", resume)]
