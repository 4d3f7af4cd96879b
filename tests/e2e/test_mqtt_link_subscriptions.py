"""The broker link's subscriptions against a real Mosquitto, in process.

A subscription made while the link is connecting must not be lost: the fleet worker joins its
shared group right after `link.start()`, and a `route()` that landed after the CONNACK handler
had listed the filters but before it marked the link connected was never sent to the broker.
The worker then believed itself subscribed and every shared job went unrouted (seen as a rare
"no answer at all" in tests/e2e/test_fleet_shared_jobs.py).
"""

from __future__ import annotations

import threading

from agent.mqtt.link import MqttLink
from agent.settings import MQTTSettings
from agent.mqtt.topics import Topics
from tests.support.wait import wait_until

FILTER = "$share/g/voice/jobs/transcribe"


def _link(broker, device_id: str = "link-test") -> MqttLink:
    return MqttLink(MQTTSettings(), Topics("voice", device_id), host=broker.host, port=broker.port,
                    on_connect=lambda: None, on_publish=lambda mid: None)


def test_route_racing_the_connack_handler_still_subscribes(broker, probe):
    link = _link(broker)
    got: list[bytes] = []
    raced = threading.Event()
    publish = link.client.publish

    def publish_then_race(topic, *args, **kwargs):
        """The handler's birth message: the last step before the link counts as connected.
        Another thread routes the filter right now, as the fleet worker does at start."""
        info = publish(topic, *args, **kwargs)
        if topic == link.topics.availability and not raced.is_set():
            raced.set()
            router = threading.Thread(target=link.route, args=(FILTER, lambda msg: got.append(msg.payload)))
            router.start()
            router.join(0.5)   # done within the window without the fix; waits for the handler with it
        return info

    link.client.publish = publish_then_race
    link.start()
    try:
        wait_until(lambda: link.connected.is_set() and raced.is_set(), 10, "the link to connect")
        wait_until(lambda: FILTER in link._handlers, 5, "the racing route()")

        def delivered() -> bool:   # resent each poll: a SUBSCRIBE may still be in flight
            probe.publish("voice/jobs/transcribe", b"job")
            return bool(got)
        wait_until(delivered, 5, "a shared job delivered to the filter routed during the CONNACK handler",
                   interval=0.2)
    finally:
        link.stop()


def test_unroute_racing_the_connack_handler_stays_unsubscribed(broker, probe):
    link = _link(broker)
    got: list[bytes] = []
    link.route(FILTER, lambda msg: got.append(msg.payload))   # before connecting: subscribed by the handler
    raced = threading.Event()
    subscribe = link.client.subscribe

    def subscribe_then_race(topic, *args, **kwargs):
        result = subscribe(topic, *args, **kwargs)
        if topic == FILTER and not raced.is_set():
            raced.set()
            leaver = threading.Thread(target=link.unroute, args=(FILTER,))
            leaver.start()
            leaver.join(0.5)
        return result

    link.client.subscribe = subscribe_then_race
    link.start()
    try:
        wait_until(lambda: link.connected.is_set() and raced.is_set(), 10, "the link to connect")
        wait_until(lambda: FILTER not in link._handlers, 5, "the racing unroute()")
        # A second member joins the group: with the first one gone, it must get every job.
        other = _link(broker, "link-test-2")
        other_got: list[bytes] = []
        other.route(FILTER, lambda msg: other_got.append(msg.payload))
        other.start()
        try:
            wait_until(lambda: other.connected.is_set(), 10, "the second link to connect")
            # its SUBSCRIBE in force: a marker published until one reaches it (those sent before are dropped)
            wait_until(lambda: probe.publish("voice/jobs/transcribe", b"marker") or other_got, 10,
                       "the second member's subscription", interval=0.2)
            for i in range(8):
                probe.publish("voice/jobs/transcribe", f"job-{i}".encode())
            wait_until(lambda: len([p for p in other_got if p.startswith(b"job-")]) == 8, 5,
                       "all 8 shared jobs at the only member of the group", interval=0.05)
        finally:
            other.stop()
    finally:
        link.stop()
