"""Typed errors whose `code` is part of the public MQTT API (see docs/mqtt-api.md).

Every failure a user can see carries one of these codes, so dashboards can branch on it
without parsing messages.
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """An error with a stable machine-readable code and a human message."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class RequestError(AgentError):
    """A request that is answered with an error (bad_request, unknown_command, busy, ...)."""


class AudioError(AgentError):
    """Audio that cannot be used: empty, corrupt, unsupported_format, too_long, too_large."""

    code = "corrupt"


class EngineError(AgentError):
    """An engine failed: engine_error, engine_killed (by a signal, e.g. the OOM killer), engine_timeout
    or engine_unavailable."""

    code = "engine_error"
