"""Operations (#5): alerts, load shedding, telemetry, sd_notify and SIGTERM, end to end.

The agent runs as a subprocess against a real Mosquitto; sd_notify is captured on an AF_UNIX
datagram socket the test binds (standing in for systemd). Engines that hang, are slow or fail
are a STAND-IN whisper.cpp program the test writes into tmp: it honours the whisper.cpp CLI
contract the agent relies on (-m, -f, text on stdout, -otxt -of) but transcribes nothing.
Memory levels are driven for real: thresholds relative to the machine's current use, moved with
config/set, and a child process holding (at most 2 GB of) memory.

The first block holds in-process unit tests of the decisions in agent/ops/alerts.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from agent.ops import alerts as operations
from agent.ops.monitor import Alert
from agent.ops.alerts import (AlertBoard, EngineHealth, OutboxWatch, engines_settled, job_watch_allowance,
                              ready_due, status_line, summarizer_restart_due)
from agent.mqtt.outbox import Outbox
from tests.support.agent import AgentProcess
from tests.support.broker import Broker, free_port
from tests.support.wait import wait_until
from tests.support.probe import Msg, Probe, retained
from tests.support.wavs import tone_wav

GB = 1024 ** 3


# =================================================================================================
# Unit tests: the decisions, without a process
# =================================================================================================


def test_job_watch_allowance_scales_with_small_timeouts() -> None:
    assert job_watch_allowance(2) == 4
    assert job_watch_allowance(30) == 60
    assert job_watch_allowance(600) == 630


def test_ready_waits_for_mqtt_and_settled_engines() -> None:
    loading = {"transcriber": {"ready": False, "error": None}, "summarizer": {"ready": True, "error": None}}
    failed = {"transcriber": {"ready": False, "error": "model not found"}, "summarizer": {"ready": True, "error": None}}
    loaded = {"transcriber": {"ready": True, "error": None}, "summarizer": {"ready": True, "error": None}}
    assert not engines_settled(loading)
    assert engines_settled(failed), "a failed engine is settled: it must not hold READY back forever"
    assert not ready_due(False, loaded, waited_s=1)
    assert not ready_due(True, loading, waited_s=1)
    assert ready_due(True, failed, waited_s=1) and ready_due(True, loaded, waited_s=1)
    assert ready_due(False, loading, waited_s=operations.READY_DEADLINE_S), "never longer than the deadline"


@pytest.mark.parametrize("enabled, level, top_pid, server_pid, expected", [
    (True, "critical", 4242, 4242, True),
    (False, "critical", 4242, 4242, False),     # off by default
    (True, "warning", 4242, 4242, False),       # only while critical
    (True, "critical", 1111, 4242, False),      # someone else is the largest
    (True, "critical", 4242, None, False),      # no server (one-shot mode, other engine)
])
def test_summarizer_restart_decision(enabled: bool, level: str, top_pid: int, server_pid: int | None,
                                     expected: bool) -> None:
    data = {"top_process": {"pid": top_pid, "name": "llama-server", "rss_mb": 300.0}}
    assert summarizer_restart_due(enabled, "memory", level, data, server_pid) is expected
    assert not summarizer_restart_due(enabled, "disk", level, data, server_pid)


def test_app_restarts_the_summarizer_only_when_due() -> None:
    """The App glue: the decision, then EngineSlot.restart() on app.engines.summarizer."""
    from agent.app import App
    restarted = []
    slot = types.SimpleNamespace(server_pid=4242, restart=lambda: restarted.append(True))

    def app(enabled: bool) -> Any:
        memory = types.SimpleNamespace(restart_summarizer_when_largest=enabled)
        return types.SimpleNamespace(settings=types.SimpleNamespace(memory=memory),
                                     engines=types.SimpleNamespace(summarizer=slot))

    critical = Alert("memory", "critical", {"top_process": {"pid": 4242}}, repeat=True)
    App._maybe_restart_summarizer(app(False), critical)
    assert restarted == []
    App._maybe_restart_summarizer(app(True), critical)
    assert restarted == [True]


def test_engine_health_counts_consecutive_engine_failures_only() -> None:
    health = EngineHealth(lambda: 2)
    engine = {"state": "failed", "error": {"code": "engine_error", "message": "exit 1"}, "job_id": "j"}
    corrupt = {"state": "failed", "error": {"code": "corrupt", "message": "not audio"}}
    assert health.observe({"state": "running"}) is None
    assert health.observe(engine) is None
    assert health.observe(corrupt) is None, "bad audio is not the engine's fault"
    action, data = health.observe(engine)
    assert action == "raise" and data["failures"] == 2 and data["threshold"] == 2
    assert data["error"]["code"] == "engine_error"
    assert health.observe(engine) is None, "raised once, not per failure"
    action, data = health.observe({"state": "done", "job_id": "ok"})
    assert action == "clear" and data["failures"] == 3
    assert health.observe({"state": "done"}) is None
    assert health.observe(engine) is None, "the count starts again after a success"


class FakeLink:
    """Records publishes; `connected` like MqttLink's; route/unroute for the stale-alert sweep."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = threading.Event()
        if connected:
            self.connected.set()
        self.published: list[tuple[str, bytes, bool]] = []
        self.routes: dict[str, Callable] = {}

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, **_: Any) -> None:
        self.published.append((topic, payload, retain))

    def route(self, topic_filter: str, handler: Callable) -> None:
        self.routes[topic_filter] = handler

    def unroute(self, topic_filter: str, **_: Any) -> None:
        self.routes.pop(topic_filter, None)

    def retained_of(self, topic: str) -> bytes | None:
        found = [p for t, p, r in self.published if t == topic and r]
        return found[-1] if found else None


def make_board(link: FakeLink) -> tuple[AlertBoard, list[tuple[str, dict]]]:
    from agent.mqtt.topics import Topics
    events: list[tuple[str, dict]] = []
    board = AlertBoard(lambda event, body: events.append((event, body)), Topics("voice", "dev"))
    board.attach(link)
    return board, events


def test_alert_board_events_repeats_and_retained_copy() -> None:
    link = FakeLink()
    board, events = make_board(link)
    board.raise_("memory", "warning", {"used_percent": 81})
    board.raise_("memory", "critical", {"used_percent": 95})
    board.raise_("memory", "critical", {"used_percent": 96}, repeat=True)
    assert [(e["level"], e.get("repeat", False)) for _, e in events] == [
        ("warning", False), ("critical", False), ("critical", True)]
    kept = json.loads(link.retained_of("voice/dev/alert/memory"))
    assert kept["level"] == "critical" and kept["used_percent"] == 96 and "repeat" not in kept
    assert board.clear("memory", {"used_percent": 50})
    assert events[-1][1] == {"kind": "memory", "level": "ok", "used_percent": 50}
    assert link.retained_of("voice/dev/alert/memory") == b""
    assert not board.clear("memory"), "clearing twice publishes nothing"
    assert len(events) == 4


def test_alert_board_offline_changes_reach_the_broker_on_connect() -> None:
    link = FakeLink(connected=False)
    board, events = make_board(link)
    board.raise_("disk", "critical", {"free_mb": 1})
    board.raise_("engine", "critical", {"failures": 3})
    board.clear("engine")
    board.raise_("outbox", "warning", {"dropped": 5}, direct=True)
    assert link.published == [], "nothing is published while offline"
    assert [e["kind"] for _, e in events] == ["disk", "engine", "engine"], "the outbox alert bypasses the outbox"
    link.connected.set()
    board.on_connect()
    assert json.loads(link.retained_of("voice/dev/alert/disk"))["level"] == "critical"
    assert link.retained_of("voice/dev/alert/engine") == b"", "cleared while offline: emptied on connect"
    assert json.loads(link.retained_of("voice/dev/alert/outbox"))["dropped"] == 5
    direct = [json.loads(p) for t, p, r in link.published if t == "voice/dev/event/alert"]
    assert [(d["kind"], d["level"]) for d in direct] == [("outbox", "warning")]


def test_alert_board_sweeps_retained_alerts_left_by_an_earlier_run() -> None:
    link = FakeLink()
    board, _ = make_board(link)
    board.raise_("disk", "critical", {"free_mb": 1})
    board.on_connect()
    handler = link.routes["voice/dev/alert/+"]
    stale = types.SimpleNamespace(topic="voice/dev/alert/memory", payload=b'{"level":"critical"}', retain=True)
    current = types.SimpleNamespace(topic="voice/dev/alert/disk", payload=b'{"level":"critical"}', retain=True)
    live = types.SimpleNamespace(topic="voice/dev/alert/engine", payload=b'{"level":"critical"}', retain=False)
    for msg in (stale, current, live):
        handler(msg)
    assert link.retained_of("voice/dev/alert/memory") == b""
    assert json.loads(link.retained_of("voice/dev/alert/disk"))["level"] == "critical"
    assert link.retained_of("voice/dev/alert/engine") is None
    board.on_connect()
    assert len(link.routes) == 1, "swept on the first connect only"


def test_outbox_overflow_alert_never_goes_through_the_full_outbox(tmp_path: Path) -> None:
    """The App wiring in miniature: events go to the outbox, whose overflow raises the alert."""
    link = FakeLink()
    holder: dict[str, OutboxWatch] = {}
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_messages=10, max_bytes=10_000_000,
                    on_overflow=lambda dropped: holder["watch"].overflow(dropped))
    from agent.mqtt.topics import Topics
    board = AlertBoard(lambda event, body: outbox.put(f"voice/dev/event/{event}", json.dumps(body).encode()),
                       Topics("voice", "dev"))
    board.attach(link)
    watch = holder["watch"] = OutboxWatch(board, outbox)
    try:
        for i in range(50):
            outbox.put("voice/dev/event/job", json.dumps({"i": i}).encode())
        assert outbox.count == 10 and outbox.dropped == 40
        alerts = [json.loads(p) for t, p, r in link.published if t == "voice/dev/event/alert"]
        assert [(a["kind"], a["level"]) for a in alerts] == [("outbox", "warning")], "one event, sent directly"
        kept = json.loads(link.retained_of("voice/dev/alert/outbox"))
        assert kept["level"] == "warning" and kept["dropped"] >= 1
        assert not [p for p in outbox.pending(0, 100) if p.topic.endswith("/event/alert")], "not stored"
        watch.tick()
        assert board.level("outbox") == "warning", "still full"
        outbox.ack([p.id for p in outbox.pending(0, 100)])
        watch.tick()
        assert board.level("outbox") == "ok"
        assert link.retained_of("voice/dev/alert/outbox") == b""
    finally:
        outbox.close()


def test_outbox_store_error_is_critical_until_storing_works_again(tmp_path: Path) -> None:
    link = FakeLink()
    board, events = make_board(link)
    outbox = types.SimpleNamespace(stored=7, count=0, size_bytes=0, max_messages=10, max_bytes=10_000, dropped=0)
    watch = OutboxWatch(board, outbox)
    watch.store_error(OSError("disk full"))
    watch.store_error(OSError("disk full"))
    assert board.level("outbox") == "critical" and events == []
    assert [json.loads(p)["level"] for t, p, r in link.published if t.endswith("event/alert")] == ["critical"]
    watch.tick()
    assert board.level("outbox") == "critical", "nothing stored since"
    outbox.stored = 8
    watch.tick()
    assert board.level("outbox") == "ok"


def test_status_line_says_what_is_wrong() -> None:
    line = status_line(phase="running", connected=False, mqtt_error="cannot connect to broker:1883", running=1,
                       limit=1, done=3, failed=1, rejected=2, memory_level="critical",
                       engines={"transcriber": {"name": "whisper_cpp", "ready": False, "error": "no model"},
                                "summarizer": {"name": "llama_server", "ready": False, "error": None}},
                       alerts=["memory", "disk"])
    assert line.startswith("running; mqtt cannot connect to broker:1883; jobs 1/1; 3 done, 1 failed, 2 rejected")
    assert "memory critical" in line and "transcriber whisper_cpp unavailable: no model" in line
    assert "summarizer llama_server loading" in line and line.endswith("alerts: disk, memory")


STANDIN_LLAMA = '''
"""STAND-IN for llama.cpp's server (tests/test_operations.py): /health and a canned chat answer."""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200 if self.path == "/health" else 404, b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant",
                                                              "content": "stand-in summary"}}]}).encode())

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
'''


def test_summarizer_restart_hook_replaces_the_server(tmp_path: Path) -> None:
    """app.engines.summarizer.restart() on a llama_server engine: a new server process, still serving."""
    from agent.engines.runtime import EngineSlot
    from agent.engines.llama_server import LlamaServerSummarizer
    from agent.settings import LlamaServerSettings, SummarizerSettings
    script = tmp_path / "llama_standin.py"
    script.write_text(STANDIN_LLAMA)
    settings = SummarizerSettings(engine="llama_server", min_words=3, llama_server=LlamaServerSettings(
        command=[sys.executable, str(script), "--port", "{port}"], port=free_port(), start_timeout_s=20,
        health_interval_s=60))
    slot = EngineSlot("summarizer", lambda: LlamaServerSummarizer(settings), "llama_server", lambda: None)
    slot.start()
    try:
        engine = slot.get(30)
        first = slot.server_pid
        assert first is not None
        assert slot.restart() is True
        deadline = time.monotonic() + 20
        while slot.server_pid in (None, first):
            assert time.monotonic() < deadline, "the server was not restarted"
            time.sleep(0.05)
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
        assert engine.summarize("one two three four five six").text == "stand-in summary"
    finally:
        slot.close()
    extractive = EngineSlot("summarizer", lambda: types.SimpleNamespace(load=lambda: None), "extractive",
                            lambda: None)
    extractive.start()
    extractive.get(5)
    assert extractive.server_pid is None and extractive.restart() is False


# =================================================================================================
# End to end: the agent as a subprocess
# =================================================================================================


STANDIN_WHISPER = '''#!{python}
"""STAND-IN for the whisper.cpp CLI, written by tests/test_operations.py. It does NOT transcribe.

Honours the CLI contract the agent relies on: -m MODEL, -f INPUT (repeatable; "-" = WAV on
stdin), text on stdout, or with -otxt one <-of NAME>.txt per input. Behaviour comes from
behaviour.json beside it, read at every run:
  warmup_s: seconds the warm-up run (audio on stdin) takes; it then writes warmed.txt
  job: "ok" | "slow" | "hang" | "fail";  job_s: seconds a "slow" job takes
"""
import json, os, sys, time

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "behaviour.json")) as f:
    behaviour = json.load(f)
args = sys.argv[1:]
inputs = [args[i + 1] for i, a in enumerate(args) if a == "-f"]
outputs = [args[i + 1] for i, a in enumerate(args) if a == "-of"]
if inputs == ["-"]:
    sys.stdin.buffer.read()
    time.sleep(behaviour.get("warmup_s", 0))
    with open(os.path.join(here, "warmed.txt"), "w") as f:
        f.write(repr(time.time()))
    sys.exit(0)
job = behaviour.get("job", "ok")
if job == "hang":
    while True:
        time.sleep(3600)
if job == "fail":
    sys.stderr.write("error: the stand-in was told to fail\\n")
    sys.exit(1)
if job == "slow":
    time.sleep(behaviour.get("job_s", 3))
for i, path in enumerate(inputs):
    text = "stand-in transcript of " + os.path.basename(path)
    if outputs:
        with open(outputs[i] + ".txt", "w") as f:
            f.write(text + "\\n")
    else:
        print(text)
'''


class StandInWhisper:
    """The stand-in program, its dummy model and its behaviour file, in a folder of its own."""

    def __init__(self, folder: Path, **behaviour: Any) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.binary = folder / "whisper-standin"
        self.binary.write_text(STANDIN_WHISPER.replace("{python}", sys.executable))
        self.binary.chmod(0o755)
        self.model = folder / "ggml-standin.bin"
        self.model.write_bytes(b"not a model: read by nobody")
        self.set(**behaviour)

    def set(self, **behaviour: Any) -> None:
        tmp = self.folder / "behaviour.json.tmp"
        tmp.write_text(json.dumps(behaviour))
        os.replace(tmp, self.folder / "behaviour.json")

    @property
    def warmed_at(self) -> float | None:
        path = self.folder / "warmed.txt"
        return float(path.read_text()) if path.exists() else None

    def config(self, **jobs: Any) -> dict[str, Any]:
        return {"transcriber": {"engine": "whisper_cpp", "timeout_s": 600,
                                "whisper_cpp": {"binary": str(self.binary), "model": str(self.model),
                                                "timeout_s": 600, "threads": 1, "batch": False}},
                "jobs": jobs}

    def running(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.binary) in part for part in (proc.info.get("cmdline") or [])):
                found.append(proc)
        return found


class NotifySocket:
    """Stands in for systemd: a bound AF_UNIX datagram socket, every datagram kept with its times."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="va-ops-", dir="/tmp")   # socket paths: 108 bytes at most
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, float, str]] = []   # (monotonic, wall clock, text)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int = 1_000_000) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(watchdog_usec)}

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            with self._cond:
                self.messages.append((time.monotonic(), time.time(), data.decode()))
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[str], bool], *, after: float = 0.0, timeout: float = 15,
                 what: str = "") -> tuple[float, float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m[0] >= after and pred(m[2]):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no sd_notify {what} within {timeout} s; got {self.texts()[-10:]}")
                self._cond.wait(left)

    def between(self, start: float, end: float) -> list[str]:
        with self._cond:
            return [text for t, _, text in self.messages if start <= t < end]

    def texts(self) -> list[str]:
        with self._cond:
            return [text for _, _, text in self.messages]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class TimedProbe(Probe):
    """A Probe that also notes when each message arrived (wall clock)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arrived: list[float] = []
        super().__init__(*args, **kwargs)

    def _on_message(self, client, userdata, msg):  # noqa: ANN001 - paho's callback signature
        self.arrived.append(time.time())
        super()._on_message(client, userdata, msg)

    def arrival_of(self, pred: Callable[[Msg], bool]) -> float:
        with self._cond:
            for m, t in zip(self.messages, self.arrived):
                if pred(m):
                    return t
        raise AssertionError("no such message")


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    n = NotifySocket()
    yield n
    n.close()


def start_ready(agent: AgentProcess, probe: Probe, notify: NotifySocket) -> AgentProcess:
    """Start and wait for READY=1, which the main loop sends only once start() has returned.

    `availability online` is not enough before dropping a file: MQTT connects on its own thread
    while the inbox is still starting, and a file renamed in between its initial scan and its
    watch being set up would not be seen until the next start.
    """
    after = time.monotonic()
    agent.start(probe)
    notify.wait_for(lambda t: t.startswith("READY=1"), after=after, what="READY=1")
    return agent


def drop(inbox: Path, name: str, seconds: float = 0.3, freq: float = 440.0) -> Path:
    """Write a WAV into the inbox the way a well-behaved producer does (write aside, then rename)."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(tone_wav(seconds, freq=freq))
    os.rename(tmp, inbox / name)
    return inbox / name




def alerts_of(probe: Probe, root: str, kind: str) -> list[dict]:
    return [m.json for m in probe.on(f"{root}/event/alert") if m.payload and m.json.get("kind") == kind]


def records(inbox: Path) -> dict[str, list[str]]:
    """Where the inbox's files and records are: waiting, claimed, processed, failed."""
    def names(folder: Path, pattern: str = "*") -> list[str]:
        return sorted(p.name for p in folder.glob(pattern)) if folder.exists() else []
    return {"waiting": [n for n in names(inbox) if n.endswith(".wav")],
            # hidden names there are the agent's bookkeeping (the job id kept for a retry)
            "claimed": [n for n in names(inbox / ".processing") if not n.startswith(".")],
            "processed": names(inbox / "processed"), "failed": names(inbox / "failed")}


def is_watchdog(text: str) -> bool:
    return text == "WATCHDOG=1"


# --- sd_notify ----------------------------------------------------------------------------------


def test_sd_notify_ready_watchdog_status_reload_and_stopping(make_agent, broker, tmp_path: Path,
                                                             notify: NotifySocket) -> None:
    whisper = StandInWhisper(tmp_path / "standin", warmup_s=1.5, job="ok")
    probe = TimedProbe(broker.host, broker.port)
    try:
        agent = make_agent(whisper.config(), env=notify.env()).start(probe)
        _, ready_at, ready = notify.wait_for(lambda t: t.startswith("READY=1"), what="READY=1")
        online_at = probe.arrival_of(lambda m: m.topic == f"{agent.root}/availability" and m.text == "online")
        warmed_at = whisper.warmed_at
        assert warmed_at is not None and ready_at >= warmed_at, "READY waits for the transcriber to load"
        assert ready_at >= online_at - 0.2, "READY waits for MQTT"
        status = dict(line.split("=", 1) for line in ready.splitlines())
        assert status["STATUS"].startswith("running; mqtt connected; jobs 0/1")

        # WATCHDOG=1 every WATCHDOG_USEC / 2 = 0.5 s while everything is alive.
        start = time.monotonic()
        time.sleep(2.0)
        assert len([t for t in notify.between(start, time.monotonic()) if is_watchdog(t)]) >= 3

        # STATUS= follows what the agent does (here: paused).
        assert probe.request(agent.root, "pause")["status"] == "ok"
        notify.wait_for(lambda t: t.startswith("STATUS=paused"), after=start, what="STATUS=paused")
        assert probe.request(agent.root, "resume")["status"] == "ok"

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
        before = time.monotonic()
        agent.proc.send_signal(signal.SIGHUP)
        t_reload, _, reloading = notify.wait_for(lambda t: t.startswith("RELOADING=1"), after=before,
                                                 what="RELOADING=1")
        fields = dict(line.split("=", 1) for line in reloading.splitlines())
        usec = int(fields["MONOTONIC_USEC"])
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5, "CLOCK_MONOTONIC in microseconds"
        notify.wait_for(lambda t: t.startswith("READY=1"), after=t_reload, what="READY=1 after the reload")

        # SIGTERM: STOPPING=1, offline, exit 0.
        before = time.monotonic()
        assert agent.terminate() == 0
        notify.wait_for(lambda t: t == "STOPPING=1", after=before, what="STOPPING=1")
        probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", what="offline")
    finally:
        probe.close()


def test_ready_waits_for_the_broker_but_not_for_a_failed_engine(tmp_path: Path, notify: NotifySocket) -> None:
    broker = Broker(tmp_path / "late-broker")   # not started yet
    agent = AgentProcess(tmp_path / "agent", broker.port, {"summarizer": {"engine": "llama_server"}},
                         env=notify.env())       # llama_server without a command cannot load
    probe = None
    try:
        agent.start()
        time.sleep(3.0)
        assert agent.alive()
        assert not [t for t in notify.texts() if t.startswith("READY")], "no READY without MQTT"
        assert any(is_watchdog(t) for t in notify.texts()), "the watchdog is fed while starting"
        broker.start()
        probe = Probe(broker.host, broker.port)
        _, _, ready = notify.wait_for(lambda t: t.startswith("READY=1"), timeout=20, what="READY=1")
        assert "summarizer llama_server unavailable" in ready, ready
        probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "online", what="online")
        state = probe.request(agent.root, "state")["data"]
        assert state["engines"]["summarizer"]["error"] and state["engines"]["transcriber"]["ready"]
    finally:
        agent.stop()
        if probe is not None:
            probe.close()
        broker.stop()


def test_watchdog_stops_while_a_job_worker_hangs(make_agent, probe, tmp_path: Path,
                                                 notify: NotifySocket) -> None:
    """jobs.timeout_s 2 -> a job worker may stay busy 2 + min(30, 2) = 4 s; then WATCHDOG=1 stops."""
    whisper = StandInWhisper(tmp_path / "standin", job="hang")
    agent = start_ready(make_agent(whisper.config(timeout_s=2, shutdown_grace_s=1), env=notify.env()), probe, notify)
    drop(agent.inbox, "stuck.wav")
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running", what="job running")
    running_at = time.monotonic()
    time.sleep(7.5)
    early = [t for t in notify.between(running_at, running_at + 3.0) if is_watchdog(t)]
    late = [t for t in notify.between(running_at + 5.5, running_at + 7.5) if is_watchdog(t)]
    assert len(early) >= 4, "pinging goes on while the job is within its allowance"
    assert late == [], "no WATCHDOG=1 once the job worker is overdue"
    assert "watchdog: stuck: job-" in agent.log()
    assert whisper.running(), "the stand-in is still hanging"

    # SIGTERM with a 1 s grace: exit 0, the file stays claimed for the next start, nothing orphaned.
    started = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - started < 10
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", what="offline")
    where = records(agent.inbox)
    assert where["claimed"] == ["stuck.wav"] and where["processed"] == [] and where["failed"] == [], where
    assert "1 job(s) still running after 1 s" in agent.log()
    wait_until(lambda: not whisper.running(), 5, "the stand-in to be killed")


# --- SIGTERM during a job -----------------------------------------------------------------------


def test_sigterm_lets_the_running_job_finish_within_the_grace(make_agent, probe, tmp_path: Path,
                                                              notify: NotifySocket) -> None:
    whisper = StandInWhisper(tmp_path / "standin", job="slow", job_s=3)
    agent = start_ready(make_agent(whisper.config(), env=notify.env()), probe, notify)
    drop(agent.inbox, "meeting.wav")
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running", what="job running")
    before = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    notify.wait_for(lambda t: t == "STOPPING=1", after=before, what="STOPPING=1")
    # No new work is taken while the job finishes.
    answer = probe.request(agent.root, "transcribe", {"audio_b64": base64.b64encode(tone_wav(0.2)).decode()})
    assert answer["status"] == "error" and answer["error"]["code"] == "busy", answer
    assert agent.proc.wait(timeout=20) == 0
    where = records(agent.inbox)
    assert where["processed"] == ["meeting.wav", "meeting.wav.json"] and where["claimed"] == [], where
    record = json.loads((agent.inbox / "processed" / "meeting.wav.json").read_text())
    assert record["transcript"] == "stand-in transcript of meeting.wav"
    topics = [m.topic for m in probe.messages]
    transcript_at = topics.index(f"{agent.root}/event/transcript")
    offline = [i for i, m in enumerate(probe.messages)
               if m.topic == f"{agent.root}/availability" and m.text == "offline"]
    assert offline and offline[-1] > transcript_at, "the transcript was flushed before going offline"


def test_sigterm_with_a_grace_shorter_than_the_job_retakes_the_file(make_agent, probe, tmp_path: Path,
                                                                   notify: NotifySocket) -> None:
    whisper = StandInWhisper(tmp_path / "standin", job="slow", job_s=4)
    agent = start_ready(make_agent(whisper.config(shutdown_grace_s=0.5), env=notify.env()), probe, notify)
    drop(agent.inbox, "long.wav")
    job = probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running",
                         what="job running")[0].json["job_id"]
    started = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - started < 3.5, "the grace is 0.5 s, not the job's 4 s"
    probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "offline", what="offline")
    where = records(agent.inbox)
    assert where == {"waiting": [], "claimed": ["long.wav"], "processed": [], "failed": []}, where
    assert "1 job(s) still running after 0.5 s" in agent.log()
    wait_until(lambda: not whisper.running(), 5, "the stand-in to be killed")
    assert not [m for m in probe.on(f"{agent.root}/event/job") if m.json["job_id"] == job
                and m.json["state"] in ("done", "failed")], "an abandoned job is neither done nor failed"

    whisper.set(job="ok")
    start_ready(agent, probe, notify)
    wait_until(lambda: "long.wav.json" in records(agent.inbox)["processed"], 20, "the file taken again")
    where = records(agent.inbox)
    assert where == {"waiting": [], "claimed": [], "processed": ["long.wav", "long.wav.json"], "failed": []}, where
    probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["name"] == "long.wav",
                   what="its transcript")
    assert len([m for m in probe.on(f"{agent.root}/event/transcript")]) == 1, "exactly one transcript"


# --- memory -------------------------------------------------------------------------------------


HOLD = (
    "import sys\n"
    "block = b'\\x01' * int(sys.argv[1])   # written, so every page is resident\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)

TOGGLE = (
    "import sys, time\n"
    "size, period = int(sys.argv[1]), float(sys.argv[2])\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    block = b'\\x01' * size\n"
    "    time.sleep(period)\n"
    "    del block\n"
    "    time.sleep(period)\n"
)


def used_percent() -> float:
    return psutil.virtual_memory().percent


def percent_of(nbytes: int) -> float:
    return nbytes / psutil.virtual_memory().total * 100


@pytest.fixture
def memory_room() -> None:
    vm = psutil.virtual_memory()
    if vm.total < 8 * GB or vm.available < 4 * GB:
        pytest.skip("needs 8 GB of RAM with 4 GB available to move the memory level for real")


def memory_config(warn: float, critical: float, **extra: Any) -> dict[str, Any]:
    return {"memory": {"interval_s": 0.2, "warn_percent": round(warn, 2), "critical_percent": round(critical, 2),
                       "hysteresis_percent": 1.0, "repeat_s": 1.0, **extra}}


def test_memory_levels_alerts_shedding_and_recovery(make_agent, probe, broker, notify: NotifySocket,
                                                    memory_room) -> None:
    base = used_percent()
    hold = 2 * GB
    agent = start_ready(make_agent(memory_config(min(97, base + 30), min(99, base + 31)), env=notify.env()),
                        probe, notify)
    root = agent.root
    assert probe.request(root, "stats")["data"]["memory_level"] == "ok"

    # Warning: the warning threshold moved below the current use.
    warn, critical = max(1.0, base - 3), base + percent_of(hold) / 2
    assert probe.request(root, "config/set", {"config": memory_config(warn, critical)})["status"] == "ok"
    warning = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory"
                             and m.json["level"] == "warning", what="memory warning")[0].json
    for key in ("used_percent", "available_mb", "agent_rss_mb", "children_rss_mb", "top_process", "threshold"):
        assert key in warning, key
    assert warning["threshold"] == round(warn, 2) and warning["previous"] == "ok"
    assert set(warning["top_process"]) == {"pid", "name", "rss_mb"}

    # Critical: a child holding 2 GB pushes the real use over the critical threshold.
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(hold)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        critical_at = time.monotonic()
        first = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory"
                               and m.json["level"] == "critical", what="memory critical")[0].json
        assert first["used_percent"] >= round(critical, 2) and not first.get("repeat")
        kept = retained(broker.host, broker.port, f"{root}/alert/memory")
        assert kept is not None and kept.json["level"] == "critical" and kept.json["threshold"] == round(critical, 2)

        # Heavy requests are shed, the inbox holds its files.
        answer = probe.request(root, "transcribe", {"audio_b64": base64.b64encode(tone_wav(0.2)).decode()})
        assert answer["status"] == "error" and answer["error"]["code"] == "memory_pressure", answer
        assert answer["error"]["retry_after_s"] == 5.0
        drop(agent.inbox, "held.wav")
        time.sleep(2.0)
        assert records(agent.inbox)["waiting"] == ["held.wav"], "the file waits on disk"
        assert not [m for m in probe.on(f"{root}/event/job") if m.json["state"] == "running"]
        assert probe.request(root, "stats")["data"]["memory_level"] == "critical"

        # While critical the alert is repeated every repeat_s (1 s), as an event.
        repeats = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory"
                                 and m.json.get("repeat") is True, count=2, timeout=10, what="2 reminders")
        assert all(r.json["level"] == "critical" for r in repeats)
        assert time.monotonic() - critical_at >= 1.5
    finally:
        child.communicate(timeout=20)

    # The child's memory is free again: back to warning, and the inbox takes its file.
    back = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory"
                          and m.json["level"] == "warning" and m.json["previous"] == "critical",
                          timeout=15, what="warning after critical")[0].json
    assert back["used_percent"] < round(critical, 2)
    wait_until(lambda: "held.wav.json" in records(agent.inbox)["processed"], 15, "the held file processed")

    # Thresholds back up: ok, and the retained alert is cleared.
    assert probe.request(root, "config/set", {"config": memory_config(min(97, base + 30),
                                                                      min(99, base + 31))})["status"] == "ok"
    ok = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory" and m.json["level"] == "ok",
                        what="memory ok")[0].json
    assert ok["previous"] == "warning" and "used_percent" in ok
    probe.wait_for(f"{root}/alert/memory", lambda m: m.payload == b"", what="retained alert cleared")
    assert retained(broker.host, broker.port, f"{root}/alert/memory", timeout=1) is None
    levels = [a["level"] for a in alerts_of(probe, root, "memory") if not a.get("repeat")]
    assert levels == ["warning", "critical", "warning", "ok"], levels


def measure_swing(seconds: float = 1.5) -> tuple[float, float]:
    """Lowest and highest used percent seen over `seconds` (the machine is shared: measured live)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(used_percent())
        time.sleep(0.03)
    return min(seen), max(seen)


def test_memory_level_does_not_flap_at_a_threshold(make_agent, probe, memory_room) -> None:
    """A child allocating and freeing 4 % of RAM every 0.4 s makes the real use oscillate around
    the warning threshold (measured while it happens): with hysteresis that is one alert."""
    swing = min(2 * GB, int(psutil.virtual_memory().total * 0.04))
    child = subprocess.Popen([sys.executable, "-c", TOGGLE, str(swing), "0.4"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        agent = make_agent(memory_config(98, 99)).start(probe)
        root = agent.root
        low, high = measure_swing()
        assert high - low >= percent_of(swing) * 0.6, (low, high)
        middle = (low + high) / 2
        config = {"memory": {"warn_percent": round(middle, 2), "hysteresis_percent": round(high - low + 2, 1)}}
        assert probe.request(root, "config/set", {"config": config})["status"] == "ok"
        probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory", what="warning")
        low, high = measure_swing(4.0)   # 5 swings, 20 samples by the agent
        assert low < round(middle, 2) <= high, "the use did cross the threshold both ways meanwhile"
        assert [a["level"] for a in alerts_of(probe, root, "memory")] == ["warning"]
    finally:
        child.kill()
        child.wait(10)


# --- telemetry, disk, engine and outbox alerts ---------------------------------------------------


TELEMETRY_KEYS = {"uptime_s", "cpu_percent", "system_cpu_percent", "load_avg", "memory", "agent_rss_mb",
                  "children_rss_mb", "temperature_c", "disk_free_mb", "inbox", "outbox", "jobs", "caches",
                  "memory_level", "alerts"}


def test_telemetry_at_interval_shares_stats_and_disk_alert(make_agent, probe, broker,
                                                           notify: NotifySocket) -> None:
    agent = start_ready(make_agent({"telemetry": {"interval_s": 0.5}}, env=notify.env()), probe, notify)
    root = agent.root
    drop(agent.inbox, "a.wav")
    wait_until(lambda: "a.wav.json" in records(agent.inbox)["processed"], 15, "a.wav processed")
    drop(agent.inbox, "b.wav")   # the same audio: a transcript cache hit
    wait_until(lambda: "b.wav.json" in records(agent.inbox)["processed"], 15, "b.wav processed")
    assert probe.request(root, "pause")["status"] == "ok"
    drop(agent.inbox, "waiting.wav")
    start = len(probe.on(f"{root}/telemetry"))
    msgs = probe.wait_for(f"{root}/telemetry", count=start + 3, timeout=10, what="3 telemetry messages")
    t = msgs[-1].json
    assert TELEMETRY_KEYS <= set(t), TELEMETRY_KEYS - set(t)
    assert t["jobs"]["done"] == 2 and t["jobs"]["failed"] == 0 and t["jobs"]["rejected"] == 0
    assert t["caches"]["transcripts"]["hits"] == 1 and t["caches"]["transcripts"]["hit_rate"] == 0.5
    assert t["inbox"]["waiting"] == 1 and t["outbox"]["queued"] >= 0
    assert t["memory"]["used_percent"] > 0 and t["memory"]["available_mb"] > 0 and t["agent_rss_mb"] > 10
    assert len(t["load_avg"]) == 3 and t["memory_level"] == "ok"
    assert set(t["disk_free_mb"]) == {str(agent.workdir / "state"), str(agent.inbox)}
    assert t["temperature_c"] is None or -50 < t["temperature_c"] < 150
    uptimes = [m.json["uptime_s"] for m in msgs[start:]]
    assert all(0.3 <= b - a <= 2.0 for a, b in zip(uptimes, uptimes[1:])), uptimes
    stats = probe.request(root, "stats")["data"]
    assert set(stats) == set(t) - {"ts", "device_id"}, "stats and telemetry come from one builder"
    assert not [m for m in probe.on(f"{root}/telemetry") if m.retain]

    # Disk: a floor no disk can meet raises the alert; back to normal clears it.
    ok = probe.request(root, "config/set", {"config": {"memory": {"min_disk_free_mb": 1e9}}})
    assert ok["status"] == "ok", ok
    disk = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "disk", what="disk alert")[0].json
    assert disk["level"] == "critical" and disk["threshold_mb"] == 1e9 and disk["free_mb"] < 1e9
    assert disk["path"] in (str(agent.workdir / "state"), str(agent.inbox))
    kept = retained(broker.host, broker.port, f"{root}/alert/disk")
    assert kept is not None and kept.json["level"] == "critical"
    probe.wait_for(f"{root}/telemetry", lambda m: m.json["alerts"] == ["disk"], what="telemetry naming the alert")
    assert probe.request(root, "config/set", {"config": {"memory": {"min_disk_free_mb": 100}}})["status"] == "ok"
    probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "disk" and m.json["level"] == "ok",
                   what="disk ok")
    probe.wait_for(f"{root}/alert/disk", lambda m: m.payload == b"", what="retained disk alert cleared")
    assert retained(broker.host, broker.port, f"{root}/alert/disk", timeout=1) is None


def test_engine_alert_after_consecutive_failures_cleared_by_a_success(make_agent, probe, broker, tmp_path: Path,
                                                                      notify: NotifySocket) -> None:
    whisper = StandInWhisper(tmp_path / "standin", job="fail")
    agent = start_ready(make_agent(whisper.config(engine_alert_after=2), env=notify.env()), probe, notify)
    root = agent.root

    def failed(name: str) -> None:
        wait_until(lambda: f"{name}.error.json" in records(agent.inbox)["failed"], 15, f"{name} failed")

    (agent.inbox / "junk.wav").parent.mkdir(parents=True, exist_ok=True)
    (agent.inbox / "junk.wav").write_bytes(b"RIFF nonsense, not audio")
    failed("junk.wav")                       # bad audio: not the engine's fault
    drop(agent.inbox, "one.wav", freq=300)
    failed("one.wav")
    time.sleep(0.5)
    assert alerts_of(probe, root, "engine") == [], "one engine failure is not an alert"
    drop(agent.inbox, "two.wav", freq=500)
    failed("two.wav")
    alert = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "engine",
                           what="engine alert")[0].json
    assert alert["level"] == "critical" and alert["failures"] == 2 and alert["threshold"] == 2
    assert alert["error"]["code"] == "engine_error" and "stand-in was told to fail" in alert["error"]["message"]
    assert alert["engines"]["transcriber"] == "whisper_cpp"
    kept = retained(broker.host, broker.port, f"{root}/alert/engine")
    assert kept is not None and kept.json["failures"] == 2
    drop(agent.inbox, "three.wav", freq=700)
    failed("three.wav")

    whisper.set(job="ok")
    drop(agent.inbox, "four.wav", freq=900)
    probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "engine" and m.json["level"] == "ok",
                   what="engine alert cleared")
    probe.wait_for(f"{root}/alert/engine", lambda m: m.payload == b"", what="retained engine alert cleared")
    assert [a["level"] for a in alerts_of(probe, root, "engine")] == ["critical", "ok"]


def test_outbox_overflow_alert_is_published_directly(tmp_path: Path, notify: NotifySocket) -> None:
    """Broker down, events pile up past outbox.max_messages: the oldest are dropped and the outbox
    alert reaches the broker when it is back (directly: never dropped-then-alerted again), and is
    cleared once the outbox has drained."""
    broker = Broker(tmp_path / "pbroker", persistent=True).start()
    sub = Probe(broker.host, broker.port, protocol="3.1.1", client_id="ops-outbox-sub", persistent=True,
                subscribe=("voice/+/event/alert", "voice/+/alert/#", "voice/+/availability"))
    agent = AgentProcess(tmp_path / "agent", broker.port, {"outbox": {"max_messages": 10}}, env=notify.env())
    try:
        start_ready(agent, sub, notify)
        broker.stop()
        for i in range(4):                          # 5 events per job: 20 > 10
            drop(agent.inbox, f"offline{i}.wav", seconds=0.2 + 0.05 * i)
        wait_until(lambda: len([n for n in records(agent.inbox)["processed"] if n.endswith(".json")]) == 4,
                   20, "the files processed offline")
        assert agent.alive()
        broker.start()
        root = agent.root
        raised = sub.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "outbox", timeout=20,
                              what="outbox alert event")[0].json
        assert raised["level"] == "warning" and raised["dropped"] >= 10 and raised["max_messages"] == 10
        sub.wait_for(f"{root}/alert/outbox", lambda m: m.payload and m.json["level"] == "warning",
                     what="retained outbox alert")
        sub.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "outbox" and m.json["level"] == "ok",
                     timeout=20, what="outbox alert cleared")
        sub.wait_for(f"{root}/alert/outbox", lambda m: m.payload == b"", what="retained outbox alert emptied")
        assert retained(broker.host, broker.port, f"{root}/alert/outbox", timeout=1) is None
        assert len(alerts_of(sub, root, "outbox")) == 2, "no alert storm"
        assert agent.alive() and "RecursionError" not in agent.log()
    finally:
        agent.stop()
        sub.close()
        broker.stop()
