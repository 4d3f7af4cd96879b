"""The agent's life under systemd, end to end: sd_notify READY/WATCHDOG/STATUS/RELOADING/STOPPING,
readiness, the watchdog stopping while a job hangs, and SIGTERM with its grace.

The agent runs as a subprocess against a real Mosquitto; sd_notify is captured on an AF_UNIX
datagram socket the test binds (standing in for systemd). Engines that hang or are slow are a
STAND-IN whisper.cpp program written by the test.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path
from typing import Any, Callable

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.wait import wait_until
from tests.support.probe import Msg, Probe
from tests.support.wavs import tone_wav
from tests.support.lifecycle import NotifySocket, StandInWhisper, drop, records, start_ready


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


def is_watchdog(text: str) -> bool:
    return text == "WATCHDOG=1"


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
