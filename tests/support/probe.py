"""An MQTT client for tests: records every message and waits for the ones it expects."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    @property
    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode()


class Probe:
    def __init__(self, host: str, port: int, *, protocol: str = "5", subscribe: tuple[str, ...] = ("#",),
                 client_id: str | None = None, persistent: bool = False, username: str | None = None,
                 password: str | None = None) -> None:
        """`persistent` (MQTT 3.1.1 only): a broker-side session that queues messages while away."""
        self.v5 = protocol == "5"
        kwargs: dict[str, Any] = {} if self.v5 else {"clean_session": not persistent}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311, **kwargs)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.messages: list[Msg] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = subscribe
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if subscribe and not self._subscribed.wait(10):
            raise TimeoutError("probe did not subscribe within 10 s")

    def _on_connect(self, client, userdata, flags, rc, props=None):
        for t in self._topics:
            client.subscribe(t, qos=1)

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(Msg(msg.topic, bytes(msg.payload), bool(msg.retain),
                                     getattr(msg, "properties", None)))
            self._cond.notify_all()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[Msg]:
        with self._cond:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]

    def wait_for(self, topic: str, pred: Callable[[Msg], bool] = lambda m: True, *, timeout: float = 20,
                 count: int = 1, what: str = "") -> list[Msg]:
        """Wait until `count` messages on `topic` satisfy `pred`; fail saying what was awaited."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic) and _safe(pred, m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:200]) for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]
                    raise AssertionError(f"timed out after {timeout}s waiting for {count} x {what or topic}; "
                                         f"saw {len(found)} matching; on topic: {seen[-8:]}")
                self._cond.wait(left)

    def publish(self, topic: str, payload: bytes | str | dict, *, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties).wait_for_publish(10)

    def request(self, root: str, command: str, body: dict | bytes | str | None = None, *, timeout: float = 20,
                response_topic: str | None = None) -> dict:
        """Send a request and return its answer (with a Response Topic on MQTT 5 when given)."""
        transaction = uuid.uuid4().hex
        if body is None:
            body = {}
        if isinstance(body, dict):
            body = {**body, "transaction": transaction}
        props = None
        if response_topic and self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            props.CorrelationData = transaction.encode()
        start = len(self.messages)
        self.publish(f"{root}/request/{command}", body, properties=props)
        topic = response_topic or f"{root}/response/{command}"

        def mine(m: Msg) -> bool:
            if isinstance(body, dict):
                return m.json.get("transaction") == transaction
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[start:]:
                    if mqtt.topic_matches_sub(topic, m.topic) and _safe(mine, m):
                        return m.json
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no answer to {command} on {topic} within {timeout}s")
                self._cond.wait(left)


def _safe(pred: Callable[[Msg], bool], m: Msg) -> bool:
    try:
        return bool(pred(m))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def retained(host: str, port: int, topic: str, timeout: float = 3.0) -> Msg | None:
    """What a newcomer subscribing to `topic` gets as retained message (None if nothing)."""
    p = Probe(host, port, subscribe=(topic,))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in p.on(topic) if m.retain]
            if found:
                return found[-1]
            time.sleep(0.05)
        return None
    finally:
        p.close()
