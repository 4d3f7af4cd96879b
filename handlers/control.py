"""`pause` and `resume`: stop and restart taking work (inbox files wait on disk); `listening`: the microphone."""

from __future__ import annotations

from typing import Any

from agent.errors import RequestError
from handlers.base import Command, Request


def pause(req: Request) -> dict[str, Any]:
    req.services.set_paused(True)
    return {"paused": True, "listening": req.services.microphone.on}


def resume(req: Request) -> dict[str, Any]:
    req.services.set_paused(False)
    return {"paused": False, "listening": req.services.microphone.on}


def listening(req: Request) -> dict[str, Any]:
    """`{"listening": bool}` opens or closes the microphone only (Home Assistant's switch); the
    inbox, requests and fleet jobs go on. `bad_request` where no microphone is configured."""
    sv = req.services
    if not sv.microphone.present:
        raise RequestError("no microphone is configured (listen.enabled: false); pause and resume "
                           "stop and restart all work", code="bad_request")
    sv.set_listening(req.body["listening"])
    return {"paused": sv.run.paused, "listening": sv.microphone.on}


COMMANDS = [Command("pause", pause), Command("resume", resume),
            Command("listening", listening, fields={"listening": ((bool,), True)})]
