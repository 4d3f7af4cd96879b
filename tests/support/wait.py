"""A bounded wait for conditions that are not MQTT messages (files, processes, logs)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `pred` until it returns something truthy; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def all_delivered(probe: Any, root: str, timeout: float = 30) -> None:
    """A positive marker that every event the agent at `root` stored so far has reached `probe`.

    A row leaves the outbox only when the broker acknowledges it (PUBACK), so the `stats` answer
    that finds the outbox empty is published after every earlier event was accepted; the broker
    delivers one client's QoS 1 messages in order, so that answer reaches `probe` after them. This
    replaces "sleep until anything late would have arrived": it waits exactly as long as needed.
    """
    wait_until(lambda: probe.request(root, "stats")["data"]["outbox"]["queued"] == 0, timeout,
               f"{root}'s outbox drained", interval=0.2)


def handled_before(probe: Any, root: str) -> None:
    """A positive marker that the agent at `root` has handled every message `probe` published
    before this call, and that whatever it published in reply has reached `probe`.

    The agent reads its one connection in order, handling subscriptions such as
    `homeassistant/status` at once and queueing requests in order, so a `ping` sent now is
    answered only after the earlier messages were handled; its answer leaves after anything
    they made the agent publish, and the broker delivers one client's messages in order.
    """
    assert probe.request(root, "ping")["data"] == {"pong": True}


#: Probes that use `broker_echo` subscribe to this too.
ECHO_FILTER = "test-mark/#"


def broker_echo(probe: Any, timeout: float = 20) -> None:
    """A positive marker that every message the broker had accepted before now has reached `probe`
    (which must subscribe to ECHO_FILTER): `probe` publishes to itself and waits for the echo.
    Mosquitto handles one message at a time and queues it to the subscribers before it
    acknowledges it, so a message it acknowledged earlier is queued to `probe` before the echo.
    Works while the agent is down (where `all_delivered` cannot ask it anything). Published again
    until it comes back: a probe's later subscriptions may not be in force yet."""
    topic = f"{ECHO_FILTER[:-2]}/{uuid.uuid4().hex}"
    wait_until(lambda: probe.publish(topic, b"mark") or probe.on(topic), timeout,
               "the probe's own marker back from the broker", interval=0.2)
