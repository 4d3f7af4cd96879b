"""The explicit registry of MQTT commands: one module per command family, listed here.

Adding a command means adding it to a module's COMMANDS; the dispatcher never branches on names.
"""

from __future__ import annotations

from handlers import config, control, jobs, operate, ping, status
from handlers.base import Command

FAMILIES = (ping, status, config, control, jobs, operate)


def build_registry() -> dict[str, Command]:
    registry: dict[str, Command] = {}
    for family in FAMILIES:
        for command in family.COMMANDS:
            if command.name in registry:
                raise RuntimeError(f"command {command.name!r} registered twice")
            registry[command.name] = command
    return registry
