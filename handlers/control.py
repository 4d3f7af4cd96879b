"""`pause` and `resume`: stop and restart taking work (inbox files wait on disk); `listening`: the microphone."""

from __future__ import annotations

from typing import Any

from handlers.base import Command, Request


def pause(req: Request) -> dict[str, Any]:
    return req.ctx.set_paused(True)


def resume(req: Request) -> dict[str, Any]:
    return req.ctx.set_paused(False)


def listening(req: Request) -> dict[str, Any]:
    """`{"listening": bool}` opens or closes the microphone only (Home Assistant's switch); the
    inbox, requests and fleet jobs go on. `bad_request` where no microphone is configured."""
    return req.ctx.set_listening(req.body["listening"])


COMMANDS = [Command("pause", pause), Command("resume", resume),
            Command("listening", listening, fields={"listening": ((bool,), True)})]
