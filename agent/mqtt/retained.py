"""The retained `config`, `schema` and `state` on the broker.

Built by the commands' own builders (handlers/config.config_of, handlers/status.state_of), so an
answer and its retained copy never differ in shape. Published on every (re)connect and after a
config change (`publish`), and the state again whenever it changed (`observe`, registered on the
event sink for `alert` and `job` events; see RetainedState for why a finished job waits for its
thread). Topic names are pushed with `retarget`, the connection with `attach`.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from typing import Any

from agent.config.jsonschema import config_schema
from agent.mqtt.link import live
from agent.mqtt.messages import envelope
from agent.mqtt.publisher import RetainedState
from agent.mqtt.topics import Topics
from handlers.base import Services
from handlers.config import config_of
from handlers.status import state_of


_SCHEMA = json.dumps(config_schema(), separators=(",", ":"), ensure_ascii=False).encode()


class RetainedFacts:
    def __init__(self, services: Services, topics: Topics) -> None:
        self._services = services
        self._topics = topics
        self._link: Any = None
        self.state = RetainedState(partial(state_of, services), self._send_state)

    def attach(self, link: Any) -> None:
        self._link = link

    def retarget(self, topics: Topics) -> None:
        self._topics = topics

    def publish(self) -> bool:
        """The config and the state now; False (nothing sent) while not connected."""
        link = live(self._link)
        if link is None:
            return False
        topics = self._topics
        link.publish(topics.config, envelope(topics.device_id, config_of(self._services)), retain=True)
        link.publish(topics.schema, _SCHEMA, retain=True)   # the JSON Schema itself, no envelope
        self.state.publish()
        return True

    def observe(self, event: str, body: dict[str, Any]) -> None:
        """An event that may change the state: an alert (`alerts`) or a job (the running count)."""
        if event != "job" or body.get("state") == "running":
            self.state.publish_if_changed()
        elif body.get("state") in ("done", "failed"):
            # Built now, the state would still count this job: its thread gives the slot back after.
            self.state.publish_after(threading.current_thread())

    def _send_state(self, state: dict[str, Any]) -> bool:
        link = live(self._link)
        if link is None:
            return False
        link.publish(self._topics.state, envelope(self._topics.device_id, state), retain=True)
        return True
