"""Telemetry at its interval, the disk alert, the engine alert after consecutive failures, and
the outbox overflow alert, seen on a real broker from an agent subprocess.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.wait import all_delivered, wait_until
from tests.support.probe import Probe, retained
from tests.support.lifecycle import NotifySocket, StandInWhisper, alerts_of, drop, records, start_ready


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
    all_delivered(probe, root)   # an alert raised by that failure would have arrived by now
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
