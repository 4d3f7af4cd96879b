"""Log lines over MQTT (agent/ops/log_events.py) and request/log_level, against a real Mosquitto.

The agent as a subprocess: request/log_level changes the running level (and with persist the
overlay), its WARNING arrives on event/log at QoS 0 without passing through the outbox, and
with a broker password and an API key configured, neither appears in anything the agent
publishes. In-process, with the real link on the real broker: a configured password and API key
logged through every logging path (message, arguments, repr of a mapping, exception text,
f-string) are never on MQTT, and 10,000 warnings in a second arrive as a handful of lines whose
counts add up to 10,000.
"""

from __future__ import annotations

import json
import threading
import time
import logging
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import parse_settings
from agent.mqtt.link import MqttLink
from agent.mqtt.topics import Topics
from agent.ops.log_events import BURST, LogLines
from tests.support.broker import Broker
from tests.support.probe import Probe
from tests.support.wait import wait_until

PASSWORD = "pw-Zq81-never-on-mqtt"
API_KEY = "sk-test-9fK2-never-on-mqtt"


def request(probe: Probe, root: str, command: str, body: dict, count: int = 1) -> dict:
    probe.client.publish(f"{root}/request/{command}", json.dumps(body), qos=1)
    return probe.wait_for(f"{root}/response/{command}", count=count, what=f"{command} answer")[count - 1].json


def test_log_level_event_log_and_no_secret_on_mqtt(make_agent, probe, tmp_path: Path) -> None:
    agent = make_agent({"log_level": "INFO", "mqtt": {"password": PASSWORD, "username": "dev"},
                        "transcriber": {"openai": {"api_key": API_KEY}}}).start(probe)
    root = agent.root
    stored = request(probe, root, "stats", {})["data"]["outbox"]["stored"]

    answer = request(probe, root, "log_level", {"level": "DEBUG"})
    assert answer["data"] == {"level": "DEBUG", "persisted": False, "config_level": "INFO"}, answer
    line = probe.wait_for(f"{root}/event/log", lambda m: "log level set to DEBUG" in m.json["message"],
                          what="the WARNING on event/log")[0].json
    assert line["level"] == "WARNING" and line["logger"] == "agent.app" and line["count"] == 1 and line["ts"]
    assert request(probe, root, "stats", {}, count=2)["data"]["outbox"]["stored"] == stored, \
        "a log line went through the outbox"
    wait_until(lambda: " DEBUG " in agent.log(), 10, "a DEBUG line in the agent's log")

    # persist: into the overlay, like config/set; a bad level is refused and changes nothing
    answer = request(probe, root, "log_level", {"level": "warning", "persist": True}, count=2)
    assert answer["data"]["persisted"] is True and answer["data"]["config_level"] == "WARNING", answer
    overlay = yaml.safe_load((Path(agent.config["state_dir"]) / "config-overlay.yaml").read_text())
    assert overlay == {"log_level": "WARNING"}
    refused = request(probe, root, "log_level", {"level": "LOUD"}, count=3)
    assert refused["error"]["code"] == "bad_request", refused

    # a refused config file with the secrets in it, an error path that logs the problems
    agent.write_config({**agent.config, "mqtt": {**agent.config["mqtt"], "password": 12345},
                        "inbox": {**agent.config["inbox"], "settle_ms": "x"}})
    probe.wait_for(f"{root}/event/log", lambda m: "config file change refused" in m.json["message"],
                   what="the refusal on event/log")
    agent.write_config(agent.config)
    request(probe, root, "config/get", {})
    leaked = [m.topic for m in probe.messages if PASSWORD.encode() in m.payload or API_KEY.encode() in m.payload]
    assert leaked == [], f"a secret was published on {leaked}"
    assert probe.on(f"{root}/schema")[0].json["properties"]["mqtt"]["properties"]["password"]["writeOnly"] is True


class Collector:
    """A subscriber that keeps each message with the QoS it was delivered at."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[tuple[int, dict]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.got.append((msg.qos, json.loads(msg.payload)))

    def lines(self) -> list[dict]:
        with self.lock:
            return [body for _, body in self.got]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_lines(broker: Broker, config: dict) -> tuple[LogLines, MqttLink, Topics]:
    settings = parse_settings({"device_id": "logs", "mqtt": {"host": "127.0.0.1", "port": broker.port}, **config},
                              environ={})
    topics = Topics("voice", "logs")
    link = MqttLink(settings.mqtt, topics, host="127.0.0.1", port=broker.port, on_connect=lambda: None,
                    on_publish=lambda mid: None)
    link.start()
    assert link.connected.wait(10)
    lines = LogLines(settings, topics)
    lines.attach(link)
    return lines, link, topics


def test_a_secret_logged_through_every_path_never_reaches_mqtt(broker: Broker) -> None:
    lines, link, topics = start_lines(broker, {"mqtt": {"password": PASSWORD},
                                               "summarizer": {"openai": {"api_key": API_KEY}},
                                               "logs": {"mqtt_level": "INFO", "mqtt_max_per_minute": 600}})
    collector = Collector(broker.port, topics.event("log"))
    log = logging.getLogger("test.secrets")
    log.setLevel(logging.INFO)
    log.propagate = False   # only to the handler under test
    log.addHandler(lines)
    try:
        log.warning("connecting with password %s", PASSWORD)
        log.warning(f"api key is {API_KEY}")
        log.error("settings: %r", {"password": PASSWORD, "api_key": API_KEY})
        try:
            raise RuntimeError(f"401 for key {API_KEY} / {PASSWORD}")
        except RuntimeError:
            log.exception("the request failed")
        log.info("both: %s and %s", API_KEY, PASSWORD)
        wait_until(lambda: len(collector.lines()) == 5, 15, "the five lines")
        text = json.dumps(collector.lines())
        assert PASSWORD not in text and API_KEY not in text
        assert text.count("***") >= 8, text   # redacted, not dropped
        assert any("RuntimeError" in line["message"] for line in collector.lines())
    finally:
        log.removeHandler(lines)
        lines.close()
        collector.close()
        link.stop()


def test_ten_thousand_warnings_in_a_second_arrive_as_a_few_counted_lines(broker: Broker) -> None:
    per_minute = 60
    lines, link, topics = start_lines(broker, {"logs": {"mqtt_max_per_minute": per_minute}})
    collector = Collector(broker.port, topics.event("log"))
    log = logging.getLogger("test.flood")
    log.setLevel(logging.INFO)
    log.propagate = False   # only to the handler under test
    log.addHandler(lines)
    try:
        started = time.monotonic()
        for i in range(10_000):
            log.warning("inbox file %d refused", i)
        log.info("an INFO line: below logs.mqtt_level WARNING, never published")
        wrote_s = time.monotonic() - started
        wait_until(lambda: sum(line["count"] for line in collector.lines()) >= 10_000, 20,
                   "every warning accounted for in the counts")
        elapsed = time.monotonic() - started
        got = collector.lines()
        print(f"10000 warnings written in {wrote_s:.2f} s; {len(got)} lines arrived in {elapsed:.1f} s "
              f"(counts {[line['count'] for line in got]})")
        assert wrote_s < 5, "logging must stay cheap while the link is slow"
        assert len(got) <= BURST + per_minute / 60 * elapsed + 1, len(got)
        assert sum(line["count"] for line in got) == 10_000
        assert all(line["level"] == "WARNING" and line["logger"] == "test.flood" for line in got)
        assert {qos for qos, _ in collector.got} == {0}, "log lines are QoS 0"
    finally:
        log.removeHandler(lines)
        lines.close()
        collector.close()
        link.stop()
