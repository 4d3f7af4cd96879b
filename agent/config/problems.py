"""How a configuration problem is addressed (key path, line) and worded for a person.

Shared by the YAML loader, the schema parser and the cross-field checks, so every message
reads the same way whichever stage found it, and secrets are redacted in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REDACTED = "***"
_MAX_SHOWN = 80


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, addressed the way the user wrote it."""

    path: str
    message: str
    value: Any = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.path
        if self.value is not None:
            shown = REDACTED if isinstance(self.value, str) and self.value == REDACTED else _show(self.value)
            where = f"{where} = {shown}" if where else shown
        text = f"{where}: {self.message}" if where else self.message
        prefix = f"line {self.line}: " if self.line is not None else ""
        return (prefix + text).replace("\n", " ")


class ConfigError(Exception):
    """Every problem found in one attempt to load the configuration."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would rebuild from the joined text; keep the structured problems instead.
        return (type(self), (self.problems,))


def _show(value: Any) -> str:
    """JSON so strings are visibly quoted and null reads like the YAML; cut so one line stays one line."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def show_number(number: float) -> str:
    """A limit as the user would write it: `5`, not `5.0`."""
    return str(int(number)) if float(number).is_integer() else str(number)


def join_path(path: str, key: Any) -> str:
    """The dotted key path of `key` below `path`, as problems name it."""
    return f"{path}.{key}" if path else str(key)
