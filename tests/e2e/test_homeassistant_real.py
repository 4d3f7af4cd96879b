"""The agent's discovery in a real Home Assistant (2025.4, installed from PyPI), restarted mid-test.

Home Assistant needs Python 3.13 and takes minutes to install, so it lives in its own venv,
.cache/homeassistant/venv, made by `scripts/homeassistant-venv` (`make homeassistant-test` makes it
and runs this file). Without that venv this test is skipped, saying how to get it.

What happens, all on loopback: a real Mosquitto; the agent as a subprocess with discovery on,
telemetry every second, a WAV as its microphone and a transcriber that returns a 36,000-character
transcript (the OpenAI wire protocol from a local stub); Home Assistant headless (`hass`, no
frontend) set up the way a user does it: onboarding creates the owner, and the MQTT integration is
added through its own config flow over the REST API. Then: the long transcript arrives, the disk
alert is raised, the agent is paused with the Pause button (pressed through Home Assistant), Home
Assistant is stopped and started again, and right after its restart every entity of the device must
have a value (a paused agent shown as paused, the alert as a problem), the recorder must have
stored the long transcript's attributes, and Home Assistant's log must hold no warning or error
about MQTT, templates or the recorder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.audio.wav import write_wav
from agent.ops.telemetry import TelemetryCollector
from tests.support.agent import AgentProcess
from tests.support.broker import Broker, free_port
from tests.support.http_stub import HTTPStub, json_reply
from tests.support.paths import REPO
from tests.support.probe import Probe
from tests.support.speech import UTTERANCES, build_speech


HASS = Path(os.environ.get("VOICE_AGENT_HASS", REPO / ".cache/homeassistant/venv/bin/hass"))
DEVICE = "test-dev"
LONG_TRANSCRIPT = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich, sagte sie 🎙. " * 450
BOUNDED_WARNINGS = re.compile(r"(WARNING|ERROR).*(mqtt|template|recorder|exceed|voice)", re.IGNORECASE)

pytestmark = [
    pytest.mark.homeassistant,
    pytest.mark.skipif(not HASS.exists(), reason=f"no Home Assistant at {HASS}: run `make homeassistant-test` "
                                                 "(scripts/homeassistant-venv installs it; needs Python 3.13)"),
]


class HomeAssistant:
    """`hass` as a subprocess, with its REST API on a free loopback port."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = f"{self.url}/"
        self.token: str | None = None
        self.proc: subprocess.Popen | None = None
        config_dir.mkdir(parents=True, exist_ok=True)
        db = config_dir / "home-assistant_v2.db"
        (config_dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: voice-agent test\n  time_zone: UTC\n  unit_system: metric\n"
            "  latitude: 0\n  longitude: 0\n  elevation: 0\n  country: DE\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\n"
            f"recorder:\n  db_url: sqlite:///{db}\n  commit_interval: 0\n"
            "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n")
        self.log = config_dir / "home-assistant.log"

    def start(self, timeout: float = 240) -> "HomeAssistant":
        out = open(self.config_dir / "stdout.log", "ab")
        self.proc = subprocess.Popen([str(HASS), "--config", str(self.config_dir), "--skip-pip"],
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hass exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2):
                    return self
            except urllib.error.HTTPError:   # 401/404: the HTTP server is up
                return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"Home Assistant did not answer within {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def call(self, method: str, path: str, body: Any = None, *, form: dict[str, str] | None = None,
             auth: bool = True) -> Any:
        headers = {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read()
        return json.loads(raw) if raw else None

    def onboard(self) -> None:
        """The first user, as the onboarding page creates it, and a token for the REST API."""
        made = self.call("POST", "/api/onboarding/users", {
            "client_id": self.client_id, "name": "Test", "username": "test", "password": "test-password-123",
            "language": "en"}, auth=False)
        tokens = self.call("POST", "/auth/token", form={"grant_type": "authorization_code", "code": made["auth_code"],
                                                       "client_id": self.client_id}, auth=False)
        self.token = tokens["access_token"]

    def login(self) -> None:
        """A new token after a restart (login flow, as the login page does)."""
        flow = self.call("POST", "/auth/login_flow", {"client_id": self.client_id, "handler": ["homeassistant", None],
                                                      "redirect_uri": self.client_id}, auth=False)
        done = self.call("POST", f"/auth/login_flow/{flow['flow_id']}", {
            "client_id": self.client_id, "username": "test", "password": "test-password-123"}, auth=False)
        tokens = self.call("POST", "/auth/token", form={"grant_type": "authorization_code", "code": done["result"],
                                                       "client_id": self.client_id}, auth=False)
        self.token = tokens["access_token"]

    def add_mqtt(self, host: str, port: int) -> None:
        """The MQTT integration through its own config flow (what Settings → Add integration does)."""
        flow = self.call("POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False})
        while flow.get("type") == "form":
            flow = self.call("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                             {"broker": host, "port": port} if flow["step_id"] == "broker" else {})
        assert flow["type"] == "create_entry", flow

    def device_states(self) -> dict[str, dict[str, Any]]:
        """entity_id -> state object of the agent's entities (their names start with the device name)."""
        return {s["entity_id"]: s for s in self.call("GET", "/api/states")
                if str(s["attributes"].get("friendly_name", "")).startswith(f"{DEVICE} ")}

    def wait_states(self, pred, what: str, timeout: float = 60) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        states: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            try:
                states = self.device_states()
            except (OSError, urllib.error.HTTPError):
                states = {}
            if states and pred(states):
                return states
            time.sleep(0.5)
        shown = {k: v["state"] for k, v in states.items()}
        raise AssertionError(f"timed out waiting for {what}; states: {shown}\nlog:\n{self.log_text()[-3000:]}")


def entity(states: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The state object whose friendly name is '<device> <name>'."""
    found = [s for s in states.values() if s["attributes"].get("friendly_name") == f"{DEVICE} {name}"]
    assert len(found) == 1, (name, sorted(s["attributes"].get("friendly_name") for s in states.values()))
    return found[0]


def recorded_attributes(db: Path, entity_id: str) -> list[dict[str, Any]]:
    """Attributes the recorder stored for an entity (its own SQLite database)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT a.shared_attrs FROM states s JOIN states_meta m ON s.metadata_id = m.metadata_id "
            "LEFT JOIN state_attributes a ON s.attributes_id = a.attributes_id WHERE m.entity_id = ?",
            (entity_id,)).fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) for r in rows if r[0]]


def test_real_home_assistant_sees_every_entity_after_its_restart(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    probe = Probe(broker.host, broker.port)
    speech = build_speech(UTTERANCES[:1], lead_s=0.5, trail_s=1.0)
    write_wav(tmp_path / "speech.wav", speech.samples)
    ha = HomeAssistant(tmp_path / "ha")
    with HTTPStub() as stub:
        stub.route("POST", "/v1/audio/transcriptions", lambda req: json_reply({"text": LONG_TRANSCRIPT}))
        agent = AgentProcess(tmp_path / "agent", broker.port, {
            "homeassistant": {"enabled": True}, "telemetry": {"interval_s": 1},
            "transcriber": {"engine": "openai", "openai": {"base_url": stub.url + "/v1", "api_key": "sk-test",
                                                           "model": "whisper-test"}},
        }, device_id=DEVICE, args=["--listen-wav", str(tmp_path / "speech.wav")])
        try:
            t0 = time.monotonic()
            ha.start()
            ha.onboard()
            ha.add_mqtt(broker.host, broker.port)
            started_s = time.monotonic() - t0
            agent.start(probe)
            root = agent.root
            probe.wait_for(f"{root}/event/transcript", timeout=90, what="the long transcript")
            probe.wait_for(f"{root}/event/summary", timeout=60, what="its summary")

            states = ha.wait_states(lambda s: entity(s, "Last transcript")["state"] not in ("unknown", "unavailable"),
                                    "the last transcript in Home Assistant", timeout=120)
            # the buttons reach the agent through Home Assistant: resume, then pause
            for name in ("Resume", "Pause"):
                button = entity(states, name)["entity_id"]
                ha.call("POST", "/api/services/button/press", {"entity_id": button})
                time.sleep(0.5)
            probe.wait_for(f"{root}/state", lambda m: m.json["paused"] is True, what="paused by the HA button")
            answer = probe.request(root, "config/set", {"config": {"memory": {"min_disk_free_mb": 1e9}}})
            assert answer["status"] == "ok", answer
            ha.wait_states(lambda s: entity(s, "Paused")["state"] == "on" and entity(s, "Disk alert")["state"] == "on",
                           "Paused and Disk alert on")

            # Home Assistant restarts; the agent keeps running
            ha.stop()
            t1 = time.monotonic()
            ha.start()
            ha.login()
            has_thermometer = TelemetryCollector().temperature() is not None
            expected = 25 + (1 if has_thermometer else 0)   # see agent/ops/homeassistant.py

            def settled(s: dict[str, dict[str, Any]]) -> bool:
                # a button never pressed (Restart, pressed below) has no state of its own: `unknown`
                return len(s) >= expected and all(v["state"] not in ("unknown", "unavailable") for k, v in s.items()
                                                  if v["attributes"].get("friendly_name") != f"{DEVICE} Restart")
            states = ha.wait_states(settled, "every entity with a value after the restart", timeout=120)
            restart_s = time.monotonic() - t1
            names = sorted(s["attributes"]["friendly_name"] for s in states.values())
            assert len(states) == expected, names
            assert entity(states, "Paused")["state"] == "on"
            assert entity(states, "Disk alert")["state"] == "on" and entity(states, "Disk alert")["attributes"]["level"] == "critical"
            assert entity(states, "Engine alert")["state"] == "off"
            assert entity(states, "Listening")["state"] == "off"   # paused: not listening
            last = entity(states, "Last transcript")
            assert LONG_TRANSCRIPT.startswith(last["state"]) and 250 <= len(last["state"]) <= 255
            assert last["attributes"]["truncated"] is True and LONG_TRANSCRIPT.startswith(last["attributes"]["text"])
            assert float(entity(states, "Memory used")["state"]) > 0
            assert int(entity(states, "Jobs failed")["state"]) == 0
            # the retained health: failing because of the critical disk alert, the reason as attribute
            health = entity(states, "Health")
            assert health["state"] == "on" and health["attributes"]["status"] == "failing", health
            assert "disk alert: critical" in health["attributes"]["reasons"], health

            # the recorder stored the bounded attributes; the log is clean
            time.sleep(2)
            stored = recorded_attributes(ha.config_dir / "home-assistant_v2.db", last["entity_id"])
            assert any(a.get("truncated") is True for a in stored), stored
            bad = [line for line in ha.log_text().splitlines() if BOUNDED_WARNINGS.search(line)]
            assert not bad, "\n".join(bad[:20])

            # the Restart button, pressed in Home Assistant: the agent answers, restarts, is back online
            onlines = len([m for m in probe.on(f"{root}/availability") if m.text == "online"])
            started_at = probe.on(f"{root}/state")[-1].json["started_at"]
            ha.call("POST", "/api/services/button/press", {"entity_id": entity(states, "Restart")["entity_id"]})
            answer = probe.wait_for(f"{root}/response/restart", what="the restart answer")[0].json
            assert answer["status"] == "ok" and answer["data"] == {"restarting": True}, answer
            probe.wait_for(f"{root}/availability", lambda m: m.text == "online", count=onlines + 1, timeout=60,
                           what="back online after the Restart button")
            probe.wait_for(f"{root}/state", lambda m: m.json["started_at"] != started_at, what="the new run's state")
            version = subprocess.run([str(HASS.with_name("python")), "-c", "import homeassistant.const as c; "
                                      "print(c.__version__)"], capture_output=True, text=True).stdout.strip()
            print(f"\nHome Assistant {version}: first start + onboarding + MQTT {started_s:.1f} s, "
                  f"restart to every entity valued {restart_s:.1f} s; {len(states)} entities: {', '.join(names)}")
        finally:
            ha.stop()
            agent.stop()
            probe.close()
            broker.stop()
