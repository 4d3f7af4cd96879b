"""The parts the composition root wires, each in process with fakes: what they push, count and hold.

Readiness (READY once due, then STATUS only on change), the shutdown grace (abandons jobs that
outlive it, then holds their threads), the run state's rejected count, the inbox feed rebuilt
on a config change, telemetry timing, the retained state's reaction to job events, and the engine
alert from a summary fallback.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from agent.jobs.run_state import RunState
from agent.jobs.shutdown import ShutdownGrace
from agent.jobs.slot import JobSlot
from agent.ops.reactions import AlertReactions
from agent.ops.readiness import Readiness
from agent.ops.telemetry import TelemetryTimer
from agent.settings import InboxSettings, Settings
from agent.sources.inbox_feed import InboxFeed
from agent.mqtt.retained import RetainedFacts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def ready(self, status: str | None = None) -> None:
        self.sent.append(("ready", status or ""))

    def status(self, text: str) -> None:
        self.sent.append(("status", text))

    def reloading(self) -> None:
        self.sent.append(("reloading", ""))


class FakeLink:
    def __init__(self, connected: bool = True) -> None:
        self.connected = threading.Event()
        if connected:
            self.connected.set()
        self.last_error = None
        self.published: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: Any, **_kw: Any) -> None:
        self.published.append((topic, payload))


def readiness(clock: Clock, engines: dict[str, Any], run: RunState) -> tuple[Readiness, FakeNotifier]:
    notifier = FakeNotifier()
    part = Readiness(notifier, engines=SimpleNamespace(describe=lambda: engines), slot=JobSlot(1),
                     pipeline=SimpleNamespace(done=0, failed=0), monitor=SimpleNamespace(level="ok"),
                     alerts={}, run=run, stopping=threading.Event(), clock=clock)
    return part, notifier


def test_ready_is_sent_once_due_then_status_only_when_the_line_changes() -> None:
    clock, run = Clock(), RunState("t0")
    engines = {"transcriber": {"name": "t", "ready": False, "error": None}}
    part, notifier = readiness(clock, engines, run)
    part.reloading()
    part.tick()
    assert notifier.sent == [], "no READY (nor RELOADING) before MQTT and the engines are ready"
    part.attach(FakeLink())
    engines["transcriber"]["ready"] = True
    part.tick()
    assert [kind for kind, _ in notifier.sent] == ["ready"] and notifier.sent[0][1].startswith("running")
    part.tick()
    assert len(notifier.sent) == 1, "an unchanged line is not sent again within STATUS_EVERY_S"
    run.paused = True
    part.tick()
    assert notifier.sent[-1][0] == "status" and notifier.sent[-1][1].startswith("paused")


def test_ready_goes_out_at_the_deadline_without_mqtt() -> None:
    clock = Clock()
    part, notifier = readiness(clock, {}, RunState("t0"))
    part.tick()
    clock.now += 61
    part.tick()
    assert [kind for kind, _ in notifier.sent] == ["ready"]


def test_jobs_outliving_the_grace_are_abandoned_and_their_threads_held() -> None:
    slot, clock, said, beats = JobSlot(2), Clock(), [], []
    assert slot.try_acquire()
    grace = ShutdownGrace(slot, 5, beat=lambda: (beats.append(1), setattr(clock, "now", clock.now + 1)),
                          say=said.append, clock=clock, poll_s=0)
    grace.begin()
    assert slot.limit == 0 and not slot.try_acquire(), "no new work once the grace began"
    grace.wait()
    assert grace.abandoned.is_set() and grace.left() == 0 and len(beats) == 5
    assert said and "1 running job" in said[0]
    grace.hold("job", {"state": "done"})   # the main thread is never held
    held = threading.Thread(target=grace.hold, args=("job", {"state": "done"}), daemon=True)
    held.start()
    held.join(0.3)
    assert held.is_alive(), "a job thread past the grace stops before it stores anything"


def test_no_job_running_means_no_abandon() -> None:
    grace = ShutdownGrace(JobSlot(1), 5, beat=lambda: None, say=lambda _t: None)
    grace.begin()
    grace.wait()
    assert not grace.abandoned.is_set()


def test_the_run_state_counts_rejected_jobs_only() -> None:
    run = RunState("t0")
    for state in ("queued", "rejected", "running", "rejected", "failed"):
        run.observe_job("job", {"state": state})
    assert run.rejected == 2


class FakeWorker:
    def __init__(self, settings: InboxSettings, kind: str, log: list[str]) -> None:
        self.inbox = SimpleNamespace(path=settings.path)
        self.log = log
        log.append(f"build {kind} {settings.path}")

    def start(self) -> None:
        self.log.append("start")

    def stop(self, grace_s: float) -> None:
        self.log.append(f"stop {grace_s:g}")


def test_the_inbox_feed_is_replaced_when_its_section_changes(tmp_path: Any) -> None:
    log: list[str] = []
    feed = InboxFeed(InboxSettings(enabled=False), lambda s, kind: FakeWorker(s, kind, log))
    assert feed.current is None and log == []
    on = InboxSettings(enabled=True, path=str(tmp_path / "a"))
    assert feed.reconfigure(on, changed=True) == []
    assert feed.current.path == on.path and log == [f"build inbox {on.path}", "start"]
    moved = replace(on, path=str(tmp_path / "b"))
    assert feed.reconfigure(moved, changed=True) == ["inbox"]
    assert feed.current.path == moved.path and log[2:] == ["stop 30", f"build inbox {moved.path}", "start"]
    assert feed.reconfigure(replace(moved, enabled=False), changed=True) == ["inbox"] and feed.current is None


def test_telemetry_goes_out_every_interval_while_connected() -> None:
    clock, sent = Clock(), []
    topics = SimpleNamespace(telemetry="root/telemetry", device_id="dev")
    timer = TelemetryTimer(lambda: {"n": len(sent)}, sent.append, interval_s=10, topics=topics, clock=clock)
    timer.tick()
    assert sent == [], "nothing while not connected"
    link = FakeLink()
    timer.attach(link)
    timer.tick()
    clock.now += 5
    timer.tick()
    assert sent == [{"n": 0}] and [t for t, _ in link.published] == ["root/telemetry"]
    clock.now += 5
    timer.tick()
    assert len(sent) == 2
    timer.reconfigure(SimpleNamespace(telemetry=SimpleNamespace(interval_s=0)), topics)
    clock.now += 100
    timer.tick()
    assert len(sent) == 2, "interval 0 switches telemetry off"


def test_the_retained_state_follows_job_events() -> None:
    facts = RetainedFacts.__new__(RetainedFacts)
    calls: list[str] = []
    facts.state = SimpleNamespace(publish_if_changed=lambda: calls.append("now"),
                                  publish_after=lambda thread: calls.append("after"))
    for event, state in (("job", "queued"), ("job", "running"), ("job", "done"), ("job", "rejected"),
                         ("alert", None)):
        facts.observe(event, {"state": state})
    assert calls == ["now", "after", "now"]


class FakeBoard:
    def __init__(self) -> None:
        self.current: dict[str, dict[str, Any]] = {}

    def raise_(self, kind: str, level: str, data: dict[str, Any], *, repeat: bool = False) -> None:
        self.current[kind] = {"kind": kind, "level": level, **data}

    def clear(self, kind: str, data: dict[str, Any] | None = None) -> None:
        self.current.pop(kind, None)


def test_a_summary_fallback_raises_a_warning_that_never_downgrades_an_engine_alert() -> None:
    board = FakeBoard()
    reactions = AlertReactions(board, SimpleNamespace(describe=lambda: {}), Settings())
    reactions.on_summary({"engine": "llama_server"})
    assert board.current["engine"]["level"] == "warning"
    reactions.on_summary(None)
    assert "engine" not in board.current
    board.raise_("engine", "critical", {"failures": 3})
    reactions.on_summary({"engine": "llama_server"})
    reactions.on_summary(None)
    assert board.current["engine"]["level"] == "critical", "a transcriber alert is not the fallback's to clear"


def test_pause_reaches_admission_the_state_and_every_source() -> None:
    from agent.jobs.admission import Admission
    from agent.sources.run_control import RunControl

    calls: list[str] = []

    def part(name: str, **more: Any) -> Any:
        return SimpleNamespace(poke=lambda: calls.append(f"{name}.poke"), **more)

    run, admission = RunState("t0"), Admission(JobSlot(1))
    control = RunControl(run, admission, inbox=part("inbox"),
                         listening=part("listening", settle=lambda: calls.append("settle")),
                         fleet=part("fleet"), on_change=lambda: calls.append("state"))
    control.set_paused(True)
    assert run.paused and not admission.open()
    assert calls == ["inbox.poke", "listening.poke", "settle", "state", "fleet.poke"]
    calls.clear()
    control.set_listening(False)
    assert run.mic_off and admission.open() is False and calls == ["listening.poke", "settle", "state"]
    control.set_paused(False)
    assert admission.open() and run.mic_off, "resume does not reopen a microphone switched off"
