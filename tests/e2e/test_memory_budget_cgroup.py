"""`voice-agent run` inside a real cgroup with a small memory limit: the budget is the cgroup's, and
its alerts and shedding follow it, on a machine with gigabytes free. It skips, saying why, only
where cgroups cannot be written.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import pytest

from tests.support.cgroup import Box, CgroupUnavailable
from tests.support.probe import Probe
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav


MB = 1024 * 1024


HOLD = (
    "import sys\n"
    "sys.stdin.readline()                      # allocate only once moved into the cgroup\n"
    "block = bytearray(int(sys.argv[1]))\n"
    "for i in range(0, len(block), 4096):\n"
    "    block[i] = 1                           # touch every page so it is resident\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
)
LIMIT = 200 * MB


@pytest.fixture
def box() -> Box:
    try:
        b = Box.create(LIMIT, name="va-test")
    except CgroupUnavailable as exc:
        pytest.skip(f"cgroups cannot be written here: {exc}")
    yield b
    b.close()


def memory_alerts(probe: Probe, root: str) -> list[dict]:
    return [m.json for m in probe.on(f"{root}/event/alert") if m.payload and m.json.get("kind") == "memory"]


def test_cgroup_limit_drives_alerts_and_shedding(box: Box, make_agent, probe: Probe) -> None:
    """Agent in a 200 MB cgroup: warn 8 %, critical 55 % of it. The machine has GBs free, so only the
    cgroup's limit can produce these levels; a process holding 100 MB in the same cgroup (not a
    child of the agent: counted because the cgroup counts it) makes it critical."""
    import psutil
    assert psutil.virtual_memory().available > 4 * LIMIT, "the point: the machine itself has plenty free"
    agent = make_agent({"memory": {"interval_s": 0.2, "warn_percent": 8, "critical_percent": 55,
                                   "hysteresis_percent": 2, "repeat_s": 60}})
    agent.start(None, wait_online=False)
    assert agent.proc is not None
    box.add(agent.proc.pid)
    root = agent.root
    probe.wait_for(f"{root}/availability", lambda m: m.text == "online", timeout=30, what="agent online")

    # The agent alone (about 30 MB charged to the cgroup, 15 % of 200 MB) is above 8 %: a warning.
    warning = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory"
                             and m.json["level"] == "warning", what="memory warning")[0].json
    assert warning["limit_source"] == box.limit_source and warning["budget_mb"] == 200.0, warning
    assert 8 <= warning["used_percent"] < 55
    stats = probe.request(root, "stats")["data"]
    assert stats["memory_level"] == "warning"
    assert stats["memory"]["limit_source"] == box.limit_source and stats["memory"]["budget_mb"] == 200.0
    assert stats["memory"]["machine_available_mb"] > 4 * 200

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(100 * MB)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        box.add(holder.pid)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "ready"
        critical = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory"
                                  and m.json["level"] == "critical", what="memory critical")[0].json
        assert critical["limit_source"] == box.limit_source and critical["used_percent"] >= 55
        assert critical["children_rss_mb"] < 100, "the holder is not the agent's child: the cgroup counted it"

        # Shedding: a request is refused with memory_pressure, an inbox file waits on disk.
        answer = probe.request(root, "transcribe", {"audio_b64": base64.b64encode(tone_wav(0.2)).decode()})
        assert answer["status"] == "error" and answer["error"]["code"] == "memory_pressure", answer
        agent.inbox.mkdir(parents=True, exist_ok=True)
        (agent.inbox / ".held.wav.part").write_bytes(tone_wav(0.3))
        os.rename(agent.inbox / ".held.wav.part", agent.inbox / "held.wav")
        time.sleep(1.5)
        assert (agent.inbox / "held.wav").exists(), "the file waits while memory is critical"
        assert not (agent.inbox / "processed" / "held.wav.json").exists()
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=20)

    # The holder is gone: back to warning, the waiting file is processed, nothing was killed.
    back = probe.wait_for(f"{root}/event/alert", lambda m: m.json["kind"] == "memory"
                          and m.json["previous"] == "critical", timeout=15, what="memory back from critical")[0].json
    assert back["level"] == "warning"
    wait_until(lambda: (agent.inbox / "processed" / "held.wav.json").exists(), 20, "the held file processed")
    assert agent.alive() and box.oom_kills() == 0
    levels = [a["level"] for a in memory_alerts(probe, root) if not a.get("repeat")]
    assert levels == ["warning", "critical", "warning"], levels
