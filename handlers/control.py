"""`pause` and `resume`: stop and restart taking work (inbox files wait on disk)."""

from __future__ import annotations

from typing import Any

from handlers.base import Command, Request


def pause(req: Request) -> dict[str, Any]:
    return req.ctx.set_paused(True)


def resume(req: Request) -> dict[str, Any]:
    return req.ctx.set_paused(False)


def listening(req: Request) -> dict[str, Any]:
    """`{"listening": true}` = resume, false = pause: one topic for an on/off switch (Home Assistant)."""
    return req.ctx.set_paused(not req.body["listening"])


COMMANDS = [Command("pause", pause), Command("resume", resume),
            Command("listening", listening, fields={"listening": ((bool,), True)})]
