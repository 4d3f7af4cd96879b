"""The MQTT connection, and with `mqtt.host: null` the embedded broker it goes to.

`Connections.make(settings, topics)` builds a link with the request routes on it; the App
pushes it to every part that publishes (`attach`). A live switch to `host: null` starts the local
broker it means instead of crashing; a switch back to a real broker stops it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from agent.mqtt.broker import EmbeddedBroker
from agent.mqtt.link import MqttLink
from agent.mqtt.topics import Topics
from agent.settings import Settings

log = logging.getLogger(__name__)


class Connections:
    def __init__(self, settings: Settings, install_id: str, *, on_connect: Callable[[], None],
                 on_publish: Callable[..., Any], on_request: Callable[[Any], None]) -> None:
        self._install_id = install_id
        self._on_connect, self._on_publish, self._on_request = on_connect, on_publish, on_request
        local = settings.mqtt.host is None
        self.broker = EmbeddedBroker(Path(settings.state_dir), settings.mqtt.port) if local else None

    def start(self, topic_prefix: str) -> None:
        """Start the embedded broker, if there is one."""
        if self.broker is not None:
            port = self.broker.start()
            log.info("watch the messages with: mosquitto_sub -h 127.0.0.1 -p %d -t '%s/#' -v", port, topic_prefix)

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()

    def make(self, s: Settings, topics: Topics) -> MqttLink:
        if s.mqtt.host is None and self.broker is None:
            self.broker = EmbeddedBroker(Path(s.state_dir), s.mqtt.port)
            self.broker.start()
        elif s.mqtt.host is not None and self.broker is not None:
            self.broker.stop()
            self.broker = None
        host, port = (s.mqtt.host, s.mqtt.port) if self.broker is None else ("127.0.0.1", self.broker.port)
        link = MqttLink(s.mqtt, topics, host=host, port=port, on_connect=self._on_connect,
                        on_publish=self._on_publish, install_id=self._install_id)
        for topic_filter in topics.request_filters:
            link.route(topic_filter, self._on_request)
        return link
