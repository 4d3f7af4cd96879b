"""examples/node-red/flows.json in a real, headless Node-RED 4 against a real agent and broker.

Node-RED is installed with npm into .cache/node-red (scripts/test does it; this test does it too
when it is missing, and FAILS with a clear message when it cannot). The flow under test is a
copy of the example with only two changes: the broker node points at the test broker, and the
transcript formatter's output (and the responses formatter's) also goes to a core `file` node
writing JSON lines into the test's folder. Inject nodes cannot be clicked headless; the example's
"ping all" inject fires once at deploy, and the agent's answer to it is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.wavs import tone_wav
from tests.test_inbox import drop

REPO = Path(__file__).resolve().parents[1]
FLOWS = REPO / "examples/node-red/flows.json"
PREFIX = REPO / ".cache/node-red"
RED_JS = PREFIX / "node_modules/node-red/red.js"
INSTALL = ["npm", "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "node-red@4"]


def node_red() -> Path:
    """red.js of Node-RED 4, installing it into .cache/node-red when missing (or failing clearly)."""
    if not RED_JS.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            pytest.fail("Node-RED 4 is not installed and node/npm are missing: install Node.js 20 and run "
                        f"`{' '.join(INSTALL)}` (scripts/test does this)")
        PREFIX.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(INSTALL, capture_output=True, text=True, timeout=900)
        if run.returncode != 0 or not RED_JS.exists():
            pytest.fail(f"cannot install Node-RED 4 with `{' '.join(INSTALL)}` (exit {run.returncode}):\n"
                        f"{run.stderr[-2000:]}")
    version = json.loads((RED_JS.parent / "package.json").read_text())["version"]
    assert version.startswith("4."), f"{RED_JS} is Node-RED {version}, not 4.x"
    return RED_JS


def test_example_flow_uses_core_nodes_only():
    flows = json.loads(FLOWS.read_text())
    core = {"tab", "comment", "mqtt-broker", "mqtt in", "mqtt out", "function", "debug", "inject"}
    assert {n["type"] for n in flows} <= core
    ids = {n["id"] for n in flows}
    assert len(ids) == len(flows)
    for n in flows:
        for outputs in n.get("wires", []):
            assert set(outputs) <= ids, n["id"]
    topics = {n["topic"] for n in flows if n["type"] == "mqtt in"}
    assert {"voice/+/event/transcript", "voice/+/event/summary", "voice/+/event/vad", "voice/+/alert/memory",
            "voice/+/telemetry"} <= topics
    requests = {n["topic"] for n in flows if n["type"] == "inject"}
    assert {"voice/all/request/pause", "voice/all/request/resume", "voice/all/request/config/set"} <= requests
    broker = next(n for n in flows if n["type"] == "mqtt-broker")
    assert (broker["broker"], broker["port"]) == ("localhost", "1883")


FORMATTERS = ("transcript", "summary", "vad", "memory", "telemetry", "availability", "response")


def flows_for_test(broker_port: int, out: Path) -> list[dict]:
    flows = json.loads(FLOWS.read_text())
    tab = next(n["id"] for n in flows if n["type"] == "tab")
    for n in flows:
        if n["type"] == "mqtt-broker":
            n["broker"], n["port"] = "127.0.0.1", str(broker_port)
    for key in FORMATTERS:
        file_id = f"test_file_{key}"
        flows.append({"id": file_id, "type": "file", "z": tab, "name": f"test: {key}s to a file",
                      "filename": str(out / f"{key}.jsonl"), "filenameType": "str", "appendNewline": True,
                      "createDir": True, "overwriteFile": "false", "encoding": "none", "x": 760, "y": 900,
                      "wires": [[]]})
        formatter = next(n for n in flows if n["id"] == f"va_fmt_{key}")
        formatter["wires"][0].append(file_id)
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


def test_node_red_shows_live_transcripts_and_sends_requests(make_agent, broker, probe, tmp_path):
    red_js = node_red()
    agent = make_agent({"telemetry": {"interval_s": 1}}).start(probe)
    user_dir = tmp_path / "node-red"
    out = tmp_path / "out"
    user_dir.mkdir()
    out.mkdir()
    flow_file = user_dir / "flows.json"
    flow_file.write_text(json.dumps(flows_for_test(broker.port, out), indent=2))
    (user_dir / "settings.js").write_text(
        "module.exports = {\n"
        "  uiHost: '127.0.0.1', httpAdminRoot: false, httpNodeRoot: false,   // headless: no HTTP server\n"
        f"  userDir: {json.dumps(str(user_dir))}, flowFile: {json.dumps(str(flow_file))},\n"
        "  credentialSecret: false, diagnostics: {enabled: false}, runtimeState: {enabled: false},\n"
        "  telemetry: {enabled: false}, editorTheme: {projects: {enabled: false}},\n"
        "  logging: {console: {level: 'info', metrics: false, audit: false}},\n"
        "};\n")
    log = tmp_path / "node-red.log"
    env = {**os.environ, "HOME": str(user_dir), "NODE_RED_HOME": str(user_dir)}
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(["node", str(red_js), "--settings", str(user_dir / "settings.js"),
                                 "--userDir", str(user_dir), str(flow_file)],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=user_dir, env=env,
                                start_new_session=True)
    try:
        # the example's "ping all" inject fires once at deploy: the agent answers it
        pong = wait_lines(out / "response.jsonl", lambda r: r["command"] == "ping", "ping answer", proc, log)
        assert pong["device"] == agent.device_id and pong["status"] == "ok" and pong["data"] == {"pong": True}
        probe.wait_for(f"{agent.root}/response/ping", what="the agent's answer to Node-RED's ping")
        text = log.read_text()
        assert "Connected to broker" in text and "headless" in text.lower(), text[-2000:]

        drop(agent.inbox, "hello.wav", tone_wav(0.7))
        event = probe.wait_for(f"{agent.root}/event/transcript", what="transcript event")[0].json
        line = wait_lines(out / "transcript.jsonl", lambda t: t["job_id"] == event["job_id"],
                          "transcript", proc, log, timeout=30)
        assert line["device"] == agent.device_id
        assert line["text"] == event["text"] and line["text"].startswith("audio 0.70 s")   # bench_metadata
        assert line["source"] == {"kind": "inbox", "name": "hello.wav"}
        summary = wait_lines(out / "summary.jsonl", lambda t: t["job_id"] == event["job_id"], "summary", proc, log)
        assert summary["summary"] and summary["device"] == agent.device_id
        telemetry = wait_lines(out / "telemetry.jsonl", lambda t: t["device"] == agent.device_id, "telemetry",
                               proc, log)
        assert telemetry["jobs"]["limit"] == 1 and telemetry["uptime_s"] > 0
        online = wait_lines(out / "availability.jsonl", lambda t: t["device"] == agent.device_id, "online",
                            proc, log)
        assert online["online"] is True
        # VAD and memory alerts, as the agent publishes them (no microphone or memory pressure here)
        probe.publish(f"{agent.root}/event/vad", {"event": "speech_start", "segment_id": "s1", "device_id": "test-dev"})
        probe.publish(f"{agent.root}/alert/memory", {"kind": "memory", "level": "critical", "used_percent": 95.0},
                      retain=True)
        probe.publish(f"{agent.root}/alert/memory", b"", retain=True)   # cleared
        vad = wait_lines(out / "vad.jsonl", lambda v: v["segment_id"] == "s1", "vad", proc, log)
        assert vad["speaking"] is True and vad["device"] == agent.device_id
        wait_lines(out / "memory.jsonl", lambda m: m["level"] == "ok", "cleared memory alert", proc, log)
        assert [m["level"] for m in json_lines(out / "memory.jsonl")] == ["critical", "ok"]
        assert "Error" not in log.read_text(), log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
