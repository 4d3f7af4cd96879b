"""Wait until this device's agent is `online` on MQTT with the expected version (the voice_agent role).

Run on the device with the agent's own interpreter, after a (re)start:

    <venv>/bin/python await_online.py --config /etc/voice-agent/config.yaml --version 0.2.0 \
        [--since EPOCH_S] [--timeout 120]

It reads the broker, credentials, TLS, topic prefix and device id the way the agent does (its own
config loader, the environment the service gets), subscribes to `<root>/availability` and the
retained `<root>/state`, and exits 0 once availability is `online` and the state reports
`version` (and, with --since, a `started_at` at or after that moment: the new process, not the
retained state of the old one). Exit 1 on timeout, saying what it last saw; 2 when the config
cannot be read. Only the installed package is trusted: nothing here comes from the broker but
the two retained facts it compares.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import datetime
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--since", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.config import ConfigError
    from agent.config.store import ConfigStore
    from agent.mqtt.link import authenticate

    try:
        settings = ConfigStore(args.config).load()
    except ConfigError as exc:
        print(json.dumps({"ok": False, "error": f"config: {exc}"}))
        return 2
    s = settings.mqtt
    if s.host is None:
        print(json.dumps({"ok": False, "error": "mqtt.host is null (demo mode): nothing to wait on"}))
        return 2
    root = f"{s.topic_prefix}/{settings.device_id}"
    seen: dict[str, Any] = {"availability": None, "version": None, "started_at": None}
    done = threading.Event()

    def started_ok(started_at: Any) -> bool:
        if args.since is None:
            return True
        try:
            return datetime.fromisoformat(str(started_at).replace("Z", "+00:00")).timestamp() >= args.since - 1
        except ValueError:
            return False

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == f"{root}/availability":
            seen["availability"] = msg.payload.decode(errors="replace")
        elif msg.topic == f"{root}/state":
            try:
                state = json.loads(msg.payload)
            except ValueError:
                return
            seen["version"], seen["started_at"] = state.get("version"), state.get("started_at")
        if seen["availability"] == "online" and seen["version"] == args.version and started_ok(seen["started_at"]):
            done.set()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(f"{root}/availability", 1), (f"{root}/state", 1)])

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.device_id}-await",
                         protocol=mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311)
    authenticate(client, s)
    client.on_connect, client.on_message = on_connect, on_message
    client.reconnect_delay_set(1, 5)
    client.connect_async(s.host, s.port)
    client.loop_start()
    started = time.monotonic()
    try:
        ok = done.wait(args.timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"ok": ok, "root": root, "expected": args.version, "waited_s": round(time.monotonic() - started, 1),
                      **seen}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
