"""Memory levels end to end: alerts, load shedding and recovery, with no flapping at a threshold."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from tests.support.wait import wait_until
from tests.support.probe import retained
from tests.support.wavs import tone_wav
from tests.support.lifecycle import NotifySocket, alerts_of, drop, records, start_ready, used_percent


GB = 1024 ** 3


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


def thresholds(warn: float, critical: float) -> dict[str, Any]:
    """What config/set changes: the levels (the fast sampling and 1 s repeat stay the local
    file's; over MQTT they are bounded to at least 1 s and 10 s)."""
    return {"memory": {"warn_percent": round(warn, 2), "critical_percent": round(critical, 2)}}


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
    assert probe.request(root, "config/set", {"config": thresholds(warn, critical)})["status"] == "ok"
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
    assert probe.request(root, "config/set", {"config": thresholds(min(97, base + 30),
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
        # The machine's figure may show only part of the child's allocation (1.9-2.3 of 4.3 points
        # on this CI's VM; cause not established). The thresholds below come from what is
        # measured, so any clear swing will do.
        assert high - low >= 1.0, f"no clear swing in the machine's used memory: {low} - {high} %"
        middle = (low + high) / 2
        config = {"memory": {"warn_percent": round(middle, 2), "hysteresis_percent": round(high - low + 2, 1)}}
        assert probe.request(root, "config/set", {"config": config})["status"] == "ok"
        probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory", what="warning")
        for _ in range(3):
            low, high = measure_swing(4.0)   # 5 swings, 20 samples by the agent
            if low < round(middle, 2) <= high:
                break
            # the machine's baseline moved (other processes came or went): aim at the swing again;
            # the hysteresis still spans it, so a move alone cannot clear or raise the alert
            middle = (low + high) / 2
            config = {"memory": {"warn_percent": round(middle, 2)}}
            assert probe.request(root, "config/set", {"config": config})["status"] == "ok"
        else:
            raise AssertionError(f"the use never crossed the threshold both ways: {low} - {high} %")
        assert [a["level"] for a in alerts_of(probe, root, "memory")] == ["warning"]
    finally:
        child.kill()
        child.wait(10)
