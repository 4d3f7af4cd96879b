"""Whether this device's id is already taken by another connected device, asked before connecting.

Why: the device id is the MQTT client id. Two devices with the same id knock each other off the
broker in a loop (each connect takes the other's session over) and share one topic root, so the
second one must not even connect under that id. The retained `<root>/availability` says whether a
device with this id is connected (`online`; the Last Will turns it `offline`), and its MQTT 5 user
property `install` says which installation wrote it: a random token kept in `state_dir`. So a
restart of the same device after a crash or a power cut (its old `online` may still be retained
until the broker notices the dead connection) is recognised as itself and goes ahead, while another
installation under the same id is refused before it takes anything over.

The check connects once with a client id of its own (`<device_id>-idcheck-<random>`), so it cannot
disconnect the device it looks for. It needs MQTT 5 (the default protocol) and read access to the
availability topic; when either is missing, or the broker cannot be reached, the answer is "unknown"
and the agent starts as before (it logs why).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import AgentError
from agent.settings import MQTTSettings
from agent.mqtt.link import authenticate
from agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

INSTALL_FILE = "install-id"
#: The MQTT 5 user property on `online` that names the installation that wrote it.
INSTALL_PROPERTY = "install"
#: How long the check may take in all (connect, subscribe, retained message).
CHECK_TIMEOUT_S = 5.0
#: After the subscription is acknowledged, how long to wait at most for the retained message. The
#: broker sends it right behind the SUBACK, before it answers a second SUBSCRIBE (a marker sent
#: once the first is acknowledged), so the marker's SUBACK usually ends the wait much sooner.
RETAINED_WAIT_S = 0.5
#: A foreign `online` is looked at again this long later: a Last Will may be on its way (the other
#: device just died), and then this device may go ahead.
SETTLE_S = 1.5


class DuplicateDeviceError(AgentError):
    """Another connected installation uses this device id."""

    code = "duplicate_device_id"


@dataclass(frozen=True)
class Availability:
    payload: bytes
    install: str | None


def install_id(state_dir: Path) -> str:
    """This installation's token: read from `state_dir/install-id`, created once (fsynced, so a
    power cut right after the first start cannot give the same device a second identity)."""
    path = state_dir / INSTALL_FILE
    try:
        value = path.read_text(encoding="ascii").strip()
        if value:
            return value
    except (OSError, UnicodeDecodeError):
        pass
    value = secrets.token_hex(8)
    tmp = path.with_name(f".{INSTALL_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return value


def check_unique(settings: MQTTSettings, topics: Topics, host: str, port: int, install: str, *,
                 timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise DuplicateDeviceError when another installation is connected under this device id."""
    if settings.protocol != "5":
        log.info("device id check skipped: it needs MQTT 5 (mqtt.protocol is %s)", settings.protocol)
        return
    seen = _retained_availability(settings, topics, host, port, timeout_s)
    if seen is not None and _foreign(seen, install):
        time.sleep(SETTLE_S)
        seen = _retained_availability(settings, topics, host, port, timeout_s)
    if seen is not None and _foreign(seen, install):
        raise DuplicateDeviceError(
            f"device_id '{topics.device_id}' is already used by another connected device "
            f"({topics.availability} is online, written by another installation). Give this device "
            "its own device_id in the config; not connecting, so the other device keeps its session.")


def _foreign(seen: Availability, install: str) -> bool:
    return seen.payload == b"online" and seen.install is not None and seen.install != install


def _retained_availability(settings: MQTTSettings, topics: Topics, host: str, port: int,
                           timeout_s: float) -> Availability | None:
    """The retained availability message (Availability(b"", None) when none is retained), or None
    when the broker could not tell (unreachable, refused, not authorised)."""
    deadline = time.monotonic() + timeout_s
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{topics.device_id[:40]}-idcheck-{secrets.token_hex(3)}",
                         protocol=mqtt.MQTTv5)
    authenticate(client, settings)
    subscribed = threading.Event()
    granted: list[bool] = []
    found: list[Availability] = []
    got = threading.Event()   # the retained message, or the marker's SUBACK that comes after it

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if not getattr(reason, "is_failure", False):
            c.subscribe(topics.availability, qos=1)

    def on_subscribe(c: mqtt.Client, userdata: object, mid: int, reasons: list, props: object) -> None:
        if subscribed.is_set():   # the marker: anything retained has arrived by now
            got.set()
            return
        granted.append(bool(reasons) and not reasons[0].is_failure)
        subscribed.set()
        c.subscribe(f"{topics.availability}/idcheck-marker", qos=0)

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topics.availability and msg.retain:
            props = getattr(msg, "properties", None)
            user = dict(getattr(props, "UserProperty", None) or [])
            found.append(Availability(bytes(msg.payload), user.get(INSTALL_PROPERTY)))
            got.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError) as exc:
        log.info("device id check skipped: cannot reach %s:%s (%s)", host, port, exc)
        return None
    client.loop_start()
    try:
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            log.info("device id check skipped: the broker did not answer in %g s", timeout_s)
            return None
        if not granted[0]:
            log.info("device id check skipped: not allowed to read %s", topics.availability)
            return None
        got.wait(min(RETAINED_WAIT_S, max(0.0, deadline - time.monotonic())))
        return found[-1] if found else Availability(b"", None)
    finally:
        client.disconnect()
        client.loop_stop()
