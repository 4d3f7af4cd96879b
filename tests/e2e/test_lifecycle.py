"""The agent's life under systemd, end to end: sd_notify READY/WATCHDOG/STATUS/RELOADING/STOPPING,
readiness, a hanging job stopped at jobs.timeout_s while the watchdog keeps beating, and SIGTERM with
its grace.

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


def test_a_job_past_its_timeout_is_stopped_and_the_watchdog_keeps_beating(make_agent, probe, tmp_path: Path,
                                                                        notify: NotifySocket) -> None:
    """jobs.timeout_s 2 and an engine that hangs: at 2 s its process is killed, the job fails with
    `timeout` and the file goes to failed/ with that reason, while WATCHDOG=1 never pauses (before,
    pings stopped and systemd would have killed the whole agent, and the file re-run after it)."""
    whisper = StandInWhisper(tmp_path / "standin", job="hang")
    agent = start_ready(make_agent(whisper.config(timeout_s=2), env=notify.env()), probe, notify)
    drop(agent.inbox, "stuck.wav")
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running", what="job running")
    running_at = time.monotonic()
    wait_until(whisper.running, 5, "the stand-in engine to run")
    failed = probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "failed", timeout=15,
                            what="the job failed")[0].json
    failed_at = time.monotonic()
    assert failed["error"]["code"] == "timeout" and "jobs.timeout_s (2 s)" in failed["error"]["message"], failed
    assert 1.5 <= failed_at - running_at < 6, failed_at - running_at
    wait_until(lambda: not whisper.running(), 3, "the engine's process to be gone")
    where = wait_until(lambda: (r := records(agent.inbox))["failed"] and r, 10, "the file in failed/")
    assert where["failed"] == ["stuck.wav", "stuck.wav.error.json"] and where["claimed"] == [], where
    reason = json.loads((agent.inbox / "failed" / "stuck.wav.error.json").read_text())
    assert reason["code"] == "timeout", reason

    # The loop stayed healthy: WATCHDOG=1 every 0.5 s (WATCHDOG_USEC 1 s) through the whole job.
    notify.wait_for(is_watchdog, after=failed_at + 1.0, what="WATCHDOG=1 after the job")
    pings = [t for t, _, text in list(notify.messages) if is_watchdog(text) and running_at - 1 <= t <= failed_at + 1]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 6 and max(gaps) < 1.0, f"{len(pings)} pings, largest gap {max(gaps, default=0):.2f} s"
    assert "watchdog: stuck" not in agent.log()

    # ... and the next file is taken as usual.
    whisper.set(job="ok")
    drop(agent.inbox, "next.wav")
    wait_until(lambda: "next.wav.json" in records(agent.inbox)["processed"], 15, "the next file processed")


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
