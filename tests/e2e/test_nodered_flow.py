"""examples/node-red/flows.json in a real Node-RED 4 with its dashboard, against a real agent and broker.

Node-RED and the dashboard package (@flowfuse/node-red-dashboard, found by Node-RED beside itself)
are installed with npm into .cache/node-red (scripts/test does it; this test does it too when
they are missing, and FAILS with a clear message when it cannot). The flow under test is the
example unchanged, plus `file` nodes that write what its formatters pass on as JSON lines into the
test's folder. Broker address, credentials and topic prefix reach it only through the environment
(VOICE_AGENT_*), as a user would set them; the broker requires a password and the prefix is not
the default. Inject buttons are clicked the way the editor does (POST /inject/<id> with edited
values) on Node-RED's HTTP port, which listens on loopback only; the dashboard is served there too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.broker import Broker, free_port
from tests.support.paths import REPO
from tests.support.probe import Probe
from tests.support.wavs import tone_wav
from tests.support.inbox import drop


FLOWS = REPO / "examples/node-red/flows.json"
PREFIX = REPO / ".cache/node-red"
RED_JS = PREFIX / "node_modules/node-red/red.js"
DASHBOARD_PKG = PREFIX / "node_modules/@flowfuse/node-red-dashboard/package.json"
INSTALL = ["npm", "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "node-red@4",
           "@flowfuse/node-red-dashboard@1"]


def node_red() -> Path:
    """red.js of Node-RED 4 with the dashboard beside it, installing both into .cache/node-red when
    missing (or failing clearly)."""
    if not RED_JS.exists() or not DASHBOARD_PKG.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            pytest.fail("Node-RED 4 is not installed and node/npm are missing: install Node.js 20 and run "
                        f"`{' '.join(INSTALL)}` (scripts/test does this)")
        PREFIX.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(INSTALL, capture_output=True, text=True, timeout=900)
        if run.returncode != 0 or not RED_JS.exists() or not DASHBOARD_PKG.exists():
            pytest.fail(f"cannot install Node-RED 4 with `{' '.join(INSTALL)}` (exit {run.returncode}):\n"
                        f"{run.stderr[-2000:]}")
    version = json.loads((RED_JS.parent / "package.json").read_text())["version"]
    assert version.startswith("4."), f"{RED_JS} is Node-RED {version}, not 4.x"
    return RED_JS


CORE = {"tab", "comment", "mqtt-broker", "mqtt in", "mqtt out", "function", "debug", "inject", "file in"}
DASHBOARD = {"ui-base", "ui-theme", "ui-page", "ui-group", "ui-table", "ui-notification"}   # @flowfuse/node-red-dashboard
ENV_SETTINGS = ("VOICE_AGENT_MQTT_HOST", "VOICE_AGENT_MQTT_PORT", "VOICE_AGENT_MQTT_TLS", "VOICE_AGENT_MQTT_USERNAME",
                "VOICE_AGENT_MQTT_PASSWORD", "VOICE_AGENT_TOPIC_PREFIX", "VOICE_AGENT_CLIENT")


def test_example_flow_takes_broker_and_prefix_from_one_settings_node():
    flows = json.loads(FLOWS.read_text())
    assert {n["type"] for n in flows} <= CORE | DASHBOARD
    assert DASHBOARD <= {n["type"] for n in flows}
    ids = {n["id"] for n in flows}
    assert len(ids) == len(flows)
    for n in flows:
        for outputs in n.get("wires", []):
            assert set(outputs) <= ids, n["id"]
    settings = next(n for n in flows if n["id"] == "va_settings")
    assert all(f"'{name}'" in settings["func"] for name in ENV_SETTINGS)
    # nothing else names a broker, a prefix or a password: one subscription node (dynamic), one
    # sender, a broker node that connects only when the settings node says so
    broker = next(n for n in flows if n["type"] == "mqtt-broker")
    assert broker["autoConnect"] is False and broker["protocolVersion"] == "5" and "credentials" not in broker
    (sub,) = [n for n in flows if n["type"] == "mqtt in"]
    assert sub["inputs"] == 1 and sub["topic"] == "" and sub["id"] in settings["wires"][1]
    (out,) = [n for n in flows if n["type"] == "mqtt out"]
    assert out["topic"] == "" and out["id"] in settings["wires"][0]
    for n in flows:
        text = json.dumps({k: v for k, v in n.items() if k not in ("info", "name")})
        assert "voice/" not in text, f"{n['id']} hard-codes the topic prefix"
        if n["id"] != "va_settings":
            assert "PASSWORD" not in text and "env.get" not in text, n["id"]
    requests = {n["topic"] for n in flows if n["type"] == "inject" and n["topic"]}
    assert {"all/request/ping", "all/request/pause", "all/request/resume", "all/request/config/set"} <= requests


FORMATTERS = ("transcript", "summary", "vad", "alert", "health", "response", "fleet")


def flows_for_test(out: Path) -> list[dict]:
    """The example, unchanged but for file nodes that record what its formatters pass on."""
    flows = json.loads(FLOWS.read_text())
    tab = next(n["id"] for n in flows if n["type"] == "tab")
    taps = {key: (f"va_fmt_{key}", 0) for key in FORMATTERS}
    taps["request_result"] = ("va_fmt_response", 1)   # answers matched to this flow's requests
    for key, (node_id, output) in taps.items():
        file_id = f"test_file_{key}"
        flows.append({"id": file_id, "type": "file", "z": tab, "name": f"test: {key} to a file",
                      "filename": str(out / f"{key}.jsonl"), "filenameType": "str", "appendNewline": True,
                      "createDir": True, "overwriteFile": "false", "encoding": "none", "x": 760, "y": 900,
                      "wires": [[]]})
        formatter = next(n for n in flows if n["id"] == node_id)
        formatter["wires"][output].append(file_id)
    return flows


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def wait_lines(path: Path, pred, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [x for x in json_lines(path) if pred(x)]
        if found:
            return found[0]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {path.name} (node-red exit={proc.poll()}); "
                                 f"lines={json_lines(path)[-5:]}\nnode-red log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def click(port: int, node_id: str, payload: dict) -> None:
    """What the editor does when an inject button is clicked with edited values."""
    body = json.dumps({"__user_inject_props__": [{"p": "payload", "v": json.dumps(payload), "vt": "json"}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/inject/{node_id}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def auth_broker(workdir: Path, users: dict[str, str]) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    for i, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, password],
                       check=True, capture_output=True)
    passwd.chmod(0o600)
    port = free_port()
    return Broker(workdir, extra_conf=f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n",
                  port=port).start()


PREFIX_UNDER_TEST = "site7/voice"   # not the default: proves the prefix comes from the environment


def test_node_red_dashboard_requests_and_fleet_jobs(tmp_path):
    red_js = node_red()
    users = {"test-dev": "agent-pw", "node-red": "red-pw", "probe": "probe-pw"}
    broker = auth_broker(tmp_path / "broker", users)
    probe = Probe(broker.host, broker.port, username="probe", password="probe-pw")
    agent = AgentProcess(tmp_path / "agent", broker.port, {
        "mqtt": {"username": "test-dev", "topic_prefix": PREFIX_UNDER_TEST},
        "telemetry": {"interval_s": 1}, "fleet": {"worker": True}}, env={"VOICE_AGENT_MQTT_PASSWORD": "agent-pw"})
    user_dir, out = tmp_path / "node-red", tmp_path / "out"
    user_dir.mkdir()
    out.mkdir()
    flow_file = user_dir / "flows.json"
    flow_file.write_text(json.dumps(flows_for_test(out), indent=2))
    http_port = free_port()
    (user_dir / "settings.js").write_text(
        "module.exports = {\n"
        f"  uiHost: '127.0.0.1', uiPort: {http_port}, httpAdminRoot: '/', httpNodeRoot: '/',\n"
        f"  userDir: {json.dumps(str(user_dir))}, flowFile: {json.dumps(str(flow_file))},\n"
        "  credentialSecret: false, diagnostics: {enabled: false}, runtimeState: {enabled: false},\n"
        "  telemetry: {enabled: false}, editorTheme: {projects: {enabled: false}},\n"
        "  logging: {console: {level: 'info', metrics: false, audit: false}},\n"
        "};\n")
    log = tmp_path / "node-red.log"
    env = {**os.environ, "HOME": str(user_dir), "NODE_RED_HOME": str(user_dir),
           "VOICE_AGENT_MQTT_HOST": "127.0.0.1", "VOICE_AGENT_MQTT_PORT": str(broker.port),
           "VOICE_AGENT_MQTT_USERNAME": "node-red", "VOICE_AGENT_MQTT_PASSWORD": "red-pw",
           "VOICE_AGENT_TOPIC_PREFIX": PREFIX_UNDER_TEST}
    proc = None
    try:
        agent.start(probe)
        root = agent.root
        assert root == f"{PREFIX_UNDER_TEST}/test-dev"
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(["node", str(red_js), "--settings", str(user_dir / "settings.js"),
                                     "--userDir", str(user_dir), str(flow_file)],
                                    stdout=log_file, stderr=subprocess.STDOUT, cwd=user_dir, env=env,
                                    start_new_session=True)
        # the example's "ping all" inject fires once at deploy: the agent answers it
        pong = wait_lines(out / "response.jsonl", lambda r: r["command"] == "ping", "ping answer", proc, log)
        assert pong["device"] == agent.device_id and pong["status"] == "ok" and pong["data"] == {"pong": True}
        probe.wait_for(f"{root}/response/ping", what="the agent's answer to Node-RED's ping")
        text = log.read_text()
        assert f"Connected to broker: node-red@mqtt://127.0.0.1:{broker.port}" in text or \
            f"Connected to broker: mqtt://127.0.0.1:{broker.port}" in text, text[-2000:]
        assert "red-pw" not in text
        # the dashboard is served
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/dashboard/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        assert "Dashboard 2.0" in log.read_text()

        # live rows: transcript, summary, device health (retained state, telemetry, availability)
        drop(agent.inbox, "hello.wav", tone_wav(0.7))
        event = probe.wait_for(f"{root}/event/transcript", what="transcript event")[0].json
        line = wait_lines(out / "transcript.jsonl", lambda t: t["job_id"] == event["job_id"],
                          "transcript", proc, log, timeout=30)
        assert line["device"] == agent.device_id
        assert line["text"] == event["text"] and line["text"].startswith("audio 0.70 s")   # bench_metadata
        assert line["source"] == {"kind": "inbox", "name": "hello.wav"}
        summary = wait_lines(out / "summary.jsonl", lambda t: t["job_id"] == event["job_id"], "summary", proc, log)
        assert summary["summary"] and summary["device"] == agent.device_id
        health = wait_lines(out / "health.jsonl", lambda h: h.get("done", 0) >= 1 and h.get("online") is True
                            and h.get("paused") is False, "device health after the job", proc, log)
        assert health["device"] == agent.device_id and health["failed"] == 0 and health["inbox"] == 0
        assert health["memory_percent"] > 0 and health["uptime_s"] > 0
        # the agent's retained health summary (ok / degraded / failing with the reasons) in the same row
        health = wait_lines(out / "health.jsonl", lambda h: h.get("health") == "ok", "the health status", proc, log)
        assert health["health_reasons"] == "" and health["device"] == agent.device_id

        # VAD and alerts, as the agent publishes them (no microphone or memory pressure here)
        probe.publish(f"{root}/event/vad", {"event": "speech_start", "segment_id": "s1", "device_id": "test-dev"})
        probe.publish(f"{root}/alert/memory", {"kind": "memory", "level": "critical", "used_percent": 95.0},
                      retain=True)
        probe.publish(f"{root}/alert/memory", b"", retain=True)   # cleared
        vad = wait_lines(out / "vad.jsonl", lambda v: v["segment_id"] == "s1", "vad", proc, log)
        assert vad["speaking"] is True and vad["device"] == agent.device_id
        probe.publish(f"{root}/event/wake", {"model": "okay_nabu", "probability": 0.93, "source": "pyaudio:default",
                                             "at_s": 12.5, "device_id": "test-dev"})
        wake = wait_lines(out / "vad.jsonl", lambda v: v.get("event") == "wake", "wake word", proc, log)
        assert wake == {"device": agent.device_id, "event": "wake", "model": "okay_nabu", "probability": 0.93}
        wait_lines(out / "alert.jsonl", lambda m: m["kind"] == "memory" and m["level"] == "ok", "cleared alert",
                   proc, log)
        assert [m["level"] for m in json_lines(out / "alert.jsonl") if m["kind"] == "memory"] == ["critical", "ok"]

        # a transcribe request with an MQTT 5 response topic and correlation data, as a user clicks it
        wav = tmp_path / "request.wav"
        wav.write_bytes(tone_wav(1.2))
        click(http_port, "va_inj_transcribe", {"device": agent.device_id, "path": str(wav)})
        request = probe.wait_for(f"{root}/request/transcribe", what="Node-RED's transcribe request")[0]
        assert request.properties.ResponseTopic == f"{root}/response/node-red"
        correlation = request.properties.CorrelationData
        answer = probe.wait_for(f"{root}/response/node-red", what="the answer on the response topic")[0]
        assert answer.properties.CorrelationData == correlation and answer.json["status"] == "ok"
        result = wait_lines(out / "request_result.jsonl", lambda r: r["id"] == correlation.decode(),
                            "the answer matched to its request", proc, log)
        assert result["status"] == "ok" and result["device"] == agent.device_id
        assert result["text"].startswith("audio 1.20 s") and result["what"] == "transcribe request.wav"
        assert result["round_trip_ms"] >= 0

        # a fleet job: the agent (fleet.worker) takes it and answers on <prefix>/results/node-red
        job_wav = tmp_path / "job.wav"
        job_wav.write_bytes(tone_wav(1.5))
        click(http_port, "va_inj_fleet", {"path": str(job_wav)})
        job = probe.wait_for(f"{PREFIX_UNDER_TEST}/jobs/transcribe", what="Node-RED's fleet job")[0].json
        assert job["reply_to"] == f"{PREFIX_UNDER_TEST}/results/node-red" and job["audio_b64"]
        done = wait_lines(out / "fleet.jsonl", lambda r: r["id"] == job["job_id"] and r["status"] == "ok",
                          "the fleet job's result", proc, log)
        assert done["device"] == agent.device_id and done["text"].startswith("audio 1.50 s")
        assert [r["status"] for r in json_lines(out / "fleet.jsonl") if r["id"] == job["job_id"]] == ["accepted", "ok"]
        errors = [line for line in log.read_text().splitlines() if "[error]" in line or "Error" in line]
        assert not errors, log.read_text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        agent.stop()
        probe.close()
        broker.stop()
