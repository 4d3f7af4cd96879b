"""The one event sink: every `event/<name>` the agent emits goes through here.

Why one sink: the pipeline, the listener and the alert board each emit events, and several parts
react to them (engine health counts failed jobs, the retained state follows running jobs and
alerts, Home Assistant's `last/*` copies follow transcripts). Written as branches in one central
`emit`, that policy lived in the composition root; here each reaction is an observer the root
registers once, at wiring time, next to the part that owns the policy.

An emitted event is first shown to the guards (which may hold the calling thread, e.g. a job
abandoned at shutdown must not store anything), then stored by the publisher (outbox, then
MQTT), then shown to the observers, in the order they were registered. Observers are
registered before any thread emits and never removed, so emitting takes no lock.

How it is stored (agent.mqtt.outbox: a group commit): a job's progress (`job` `queued` /
`running`, `transcript`, `summary`, and `vad`, which comes before its segment's job) is stored
lazily, without an fsync; the job's last event (`done` / `failed`) is stored durably, and that one
fsync makes every event stored before it survive a power cut too. A job's thread emits that
last event before its inbox file is finished (or its spool file deleted, or its answer sent), so
a finished file still always has its events stored: one fsync per job instead of five. Every
other event (`alert`, a `rejected` job, any new name) is durable at once. `wake` is lazy too
although no later event need follow it: it is worth nothing after a power cut, and an fsync on
an SD card would add to the wake word's latency.
"""

from __future__ import annotations

from typing import Any, Callable

from agent.mqtt.publisher import Publisher
from agent.mqtt.topics import Topics

Observer = Callable[[str, dict[str, Any]], None]

#: Events a later durable event of the same work always follows (see above): stored lazily.
LAZY_EVENTS = frozenset({"transcript", "summary", "vad", "wake"})
LAZY_JOB_STATES = frozenset({"queued", "running"})


def durable(event: str, body: dict[str, Any]) -> bool:
    """Whether `event` must be fsynced when stored, or may ride on the next durable one."""
    if event == "job":
        return body.get("state") not in LAZY_JOB_STATES
    return event not in LAZY_EVENTS


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
        self._publisher.emit(self._topics.event(event), body, durable=durable(event, body))
        for name, callback in self._observers:
            if name is None or name == event:
                callback(event, body)

    def emit_ephemeral(self, event: str, body: dict[str, Any]) -> None:
        """Send `body` on `<root>/event/<event>` at QoS 0 if connected, else drop it: never stored,
        no guards, no observers. For events that the next one supersedes (job progress: see
        agent.jobs.progress for why they must not fill the durable outbox)."""
        self._publisher.send_now(self._topics.event(event), body)
