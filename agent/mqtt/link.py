"""The broker connection: Last Will, birth message, resubscribe and backoff on every reconnect.

paho-mqtt runs its network loop in its own thread and reconnects by itself with capped
exponential backoff; this class only wires the callbacks so that a reconnect restores
everything a fresh connect has (subscriptions, retained availability/state/config).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from agent.settings import MQTTSettings
from agent.mqtt.topics import Topics

log = logging.getLogger(__name__)
# paho's own errors (e.g. a TLS alert while reading the CONNACK) name the cause; its debug chatter
# is per packet and stays off whatever the agent's log level.
_paho_log = logging.getLogger(__name__ + ".paho")
_paho_log.setLevel(logging.WARNING)

MessageHandler = Callable[[mqtt.MQTTMessage], None]

#: Room in a PUBLISH besides its payload: the topic and a Response Topic (up to 64 KiB each) and
#: Correlation Data. A request this much over `max_payload_bytes` still arrives and is answered
#: `payload_too_large`; a larger one the broker never sends (MQTT 5 Maximum Packet Size).
PACKET_HEADROOM = 2 * 65_536 + 4096


def connect_properties(settings: MQTTSettings) -> Properties:
    """CONNECT properties: the largest packet the agent accepts, so the broker drops a bigger
    message instead of the agent reading (and holding) all of it before its size check."""
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = settings.max_payload_bytes + PACKET_HEADROOM
    return props



def authenticate(client: mqtt.Client, settings: MQTTSettings) -> None:
    """Credentials and TLS as configured: the agent's link and every short check connection
    (device id check, doctor) present themselves to the broker the same way."""
    if settings.username or settings.password:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls.active:
        client.tls_set(ca_certs=settings.tls.ca_file, certfile=settings.tls.cert_file, keyfile=settings.tls.key_file,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.tls_insecure_set(settings.tls.insecure)

def live(link: MqttLink | None) -> MqttLink | None:
    """`link` while it is connected, else None: what every part that publishes on the link itself
    (not through the outbox) checks first, since paho queues a publish made while disconnected."""
    return link if link is not None and link.connected.is_set() else None


class MqttLink:
    def __init__(self, settings: MQTTSettings, topics: Topics, *, host: str, port: int,
                 on_connect: Callable[[], None], on_publish: Callable[[int], None],
                 install_id: str | None = None) -> None:
        """`install_id` goes with every `online` as the MQTT 5 user property `install` (see agent.ops.identity)."""
        self.settings = settings
        self.install_id = install_id
        self.topics = topics
        self.host, self.port = host, port
        self._on_connect_cb = on_connect
        self._on_publish_cb = on_publish
        self._handlers: dict[str, MessageHandler] = {}
        self._draining: dict[str, MessageHandler] = {}   # unsubscribed, still taking late deliveries
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.last_error: str | None = None
        self._puback_failures: dict[int, int] = {}   # mid -> PUBACK reason >= 0x80 or 16 (see puback_failure)
        self.client = self._make_client()

    @property
    def v5(self) -> bool:
        return self.settings.protocol == "5"

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.topics.device_id,
                             protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        client.will_set(self.topics.availability, b"offline", qos=1, retain=True)
        authenticate(client, s)
        client.reconnect_delay_set(min_delay=max(1, int(s.reconnect_min_s)), max_delay=int(s.reconnect_max_s))
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_connect_fail = self._on_connect_fail
        client.enable_logger(_paho_log)
        return client

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=self.settings.keepalive_s,
                                  properties=connect_properties(self.settings) if self.v5 else None)
        self.client.loop_start()

    def stop(self) -> None:
        """Clean shutdown: `offline` retained (the Last Will only fires on an unclean drop)."""
        if self.connected.is_set():
            info = self.client.publish(self.topics.availability, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        # paho's loop runs once more after our own DISCONNECT and logs "Client is not connected"
        # as an error: noise on every clean stop, so its logger is detached first.
        self.client.disable_logger()
        self.client.disconnect()
        self.client.loop_stop()

    def loop_alive(self) -> bool:
        """paho's network thread is running (it exposes no public accessor for this)."""
        thread = getattr(self.client, "_thread", None)
        return thread is not None and thread.is_alive()

    # --- subscriptions -------------------------------------------------------------------

    def route(self, topic_filter: str, handler: MessageHandler) -> None:
        """Subscribe now (if connected) and again on every reconnect."""
        with self._lock:   # see _on_connect: a filter is subscribed by exactly one of the two
            self._handlers[topic_filter] = handler
            self._draining.pop(topic_filter, None)
            if self.connected.is_set():
                self.client.subscribe(topic_filter, qos=1)

    def unroute(self, topic_filter: str, *, drain: bool = False) -> None:
        """Unsubscribe. With `drain`, the handler still gets what the broker sent before the
        UNSUBSCRIBE took effect (a shared subscription's deliveries already on their way), when no
        subscribed filter matches them, until `route` or a plain `unroute` of the same filter."""
        with self._lock:
            handler = self._handlers.pop(topic_filter, None)
            self._draining.pop(topic_filter, None)
            if drain and handler is not None:
                self._draining[topic_filter] = handler
            if self.connected.is_set():
                self.client.unsubscribe(topic_filter)

    # --- publishing ----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain,
                                   properties=properties if self.v5 else None)

    def reply_properties(self, request: mqtt.MQTTMessage) -> tuple[str | None, Properties | None]:
        """The MQTT 5 Response Topic and Correlation Data of a request, if it carries them."""
        props = getattr(request, "properties", None)
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if not topic:
            return None, None
        out = Properties(PacketTypes.PUBLISH)
        corr = getattr(props, "CorrelationData", None)
        if corr is not None:
            out.CorrelationData = corr
        return topic, out

    # --- paho callbacks (network thread) -------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Without TCP_NODELAY, Nagle + delayed ACK turn a 0.6 ms round trip into ~88 ms.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.error("mqtt: %s", self.last_error)
            return
        self.connects += 1
        self.last_error = None
        log.info("mqtt: connected to %s:%s (MQTT %s)", self.host, self.port, self.settings.protocol)
        # Under the lock until `connected` is set, so a route()/unroute() from another thread
        # either comes before (its filter is in this list) or after (it subscribes itself). A
        # route() in between was never subscribed, and the fleet worker, believing itself in its
        # group, got no shared job again. paho takes none of its locks that a callback holds when
        # subscribing, so this cannot deadlock with _on_message.
        with self._lock:
            for f in self._handlers:
                client.subscribe(f, qos=1)
            client.publish(self.topics.availability, b"online", qos=1, retain=True,
                           properties=self._birth_properties())
            self.connected.set()
        try:
            self._on_connect_cb()
        except Exception:
            log.exception("mqtt: on-connect hook failed")

    def _birth_properties(self) -> Properties | None:
        if not (self.v5 and self.install_id):
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("install", self.install_id)
        return props

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError`: the exception (refused, TLS verification
        # failed, hostname mismatch) is what the operator needs to read.
        exc = sys.exc_info()[1]
        self.last_error = f"cannot connect to {self.host}:{self.port}" + (f": {exc}" if exc else "")
        log.warning("mqtt: %s; retrying with backoff", self.last_error)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if self.connected.is_set():
            log.warning("mqtt: disconnected (%s)", reason_code)
        elif not (self.last_error or "").startswith("broker refused"):
            # e.g. a TLS broker that wants a client certificate drops us before its CONNACK
            self.last_error = f"the broker closed the connection before accepting it ({reason_code})"
            log.warning("mqtt: %s; retrying with backoff", self.last_error)
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        # 16 "no matching subscribers" is a success to MQTT, but a job nobody took (agent/mqtt/offload.py)
        if getattr(reason_code, "is_failure", False) or getattr(reason_code, "value", None) == 16:
            if len(self._puback_failures) >= 64:   # nobody asked for the oldest: forget it
                self._puback_failures.pop(next(iter(self._puback_failures)), None)
            self._puback_failures[mid] = reason_code.value
        self._on_publish_cb(mid)

    def puback_failure(self, mid: int) -> int | None:
        """The broker's refusal of a QoS 1 publish (e.g. 135 not authorized), or 16 (no matching
        subscribers: delivered to nobody), once, after its PUBACK."""
        return self._puback_failures.pop(mid, None)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            handlers = [h for f, h in self._handlers.items() if mqtt.topic_matches_sub(_unshared(f), msg.topic)]
            if not handlers:
                handlers = [h for f, h in self._draining.items() if mqtt.topic_matches_sub(_unshared(f), msg.topic)]
        for handler in handlers:
            try:
                handler(msg)
            except Exception:
                log.exception("mqtt: handler for %s failed", msg.topic)


def _unshared(topic_filter: str) -> str:
    """`$share/<group>/<filter>` delivers messages on `<filter>`'s topics."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter
