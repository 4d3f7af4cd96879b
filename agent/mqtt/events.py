"""The one event sink: every `event/<name>` the agent emits goes through here.

Why one sink: the pipeline, the listener and the alert board each emit events, and several parts
react to them (engine health counts failed jobs, the retained state follows running jobs and
alerts, Home Assistant's `last/*` copies follow transcripts). Written as branches in one central
`emit`, that policy lived in the composition root; here each reaction is an observer the root
registers once, at wiring time, next to the part that owns the policy.

An emitted event is first shown to the guards (which may hold the calling thread, e.g. a job
abandoned at shutdown must not store anything), then stored durably by the publisher (outbox,
then MQTT), then shown to the observers, in the order they were registered. Observers are
registered before any thread emits and never removed, so emitting takes no lock.
"""

from __future__ import annotations

from typing import Any, Callable

from agent.mqtt.publisher import Publisher
from agent.mqtt.topics import Topics

Observer = Callable[[str, dict[str, Any]], None]


class EventSink:
    """`emit(event, body)` publishes `body` on `<root>/event/<event>` through the publisher and
    tells the observers of that event name (or of every event: name None)."""

    def __init__(self, publisher: Publisher, topics: Topics) -> None:
        self._publisher = publisher
        self._topics = topics
        self._guards: list[Observer] = []
        self._observers: list[tuple[str | None, Observer]] = []

    def retarget(self, topics: Topics) -> None:
        """Publish under these topic names from now on (a new prefix or device id)."""
        self._topics = topics

    def guard(self, callback: Observer) -> None:
        """Called with every event before it is stored (wiring time only)."""
        self._guards.append(callback)

    def observe(self, event: str | None, callback: Observer) -> None:
        """Call `callback(event, body)` after each stored event named `event` (None: every event).
        Wiring time only: observers run in the order registered."""
        self._observers.append((event, callback))

    def emit(self, event: str, body: dict[str, Any]) -> None:
        for guard in self._guards:
            guard(event, body)
        self._publisher.emit(self._topics.event(event), body)
        for name, callback in self._observers:
            if name is None or name == event:
                callback(event, body)
