"""What a command handler is: a small function from a typed request to data, or a typed error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from agent.errors import RequestError
from agent.settings import DEVICE


class AgentContext(Protocol):
    """What handlers may ask of the running agent (implemented by agent.app.App)."""

    def state(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def config_get(self) -> dict[str, Any]: ...
    def config_set(self, partial: dict[str, Any], scope: str) -> dict[str, Any]: ...
    def config_reset(self, scope: str) -> dict[str, Any]: ...
    def set_paused(self, paused: bool) -> dict[str, Any]: ...
    def set_listening(self, on: bool) -> dict[str, Any]: ...
    def transcribe_request(self, body: dict[str, Any], job_id: str) -> dict[str, Any]: ...
    def summarize_request(self, text: str, job_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Request:
    command: str
    body: dict[str, Any]
    transaction: str | None
    ctx: AgentContext
    job_id: str | None = None
    scope: str = DEVICE     # FLEET when it came on <prefix>/all/request/...: one publish, every device


@dataclass(frozen=True)
class Command:
    """A command name bound to its handler.

    `fields` maps each accepted body field to (accepted types, required); anything else in the
    body is refused as bad_request so typos do not pass silently. `heavy` commands run under
    the job slot and may be answered busy or memory_pressure.
    """

    name: str
    run: Callable[[Request], Any]
    fields: dict[str, tuple[tuple[type, ...], bool]] = field(default_factory=dict)
    heavy: bool = False

    def validate(self, body: dict[str, Any]) -> None:
        for key in body:
            if key != "transaction" and key not in self.fields:
                raise RequestError(f"unknown field '{key}'", code="bad_request", field=key)
        for key, (types, required) in self.fields.items():
            if key not in body:
                if required:
                    raise RequestError(f"missing field '{key}'", code="bad_request", field=key)
                continue
            value = body[key]
            if isinstance(value, bool) and bool not in types:
                raise RequestError(f"field '{key}' must be {_names(types)}", code="bad_request", field=key)
            if not isinstance(value, types):
                raise RequestError(f"field '{key}' must be {_names(types)}", code="bad_request", field=key)


def _names(types: tuple[type, ...]) -> str:
    words = {dict: "an object", str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "a list"}
    return " or ".join(words.get(t, t.__name__) for t in types)
