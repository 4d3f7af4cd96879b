"""The memory budget: the machine's memory or the agent's cgroup limit, whichever is tighter (issue #17).

Unit tests build fake cgroup hierarchies (v2, v1, hybrid) in tmp folders and hand them to
`BudgetReader`; the end-to-end test runs `voice-agent run` inside a real cgroup with a small
memory limit on this machine with gigabytes free, and shows the alerts and the shedding that
limit triggers. It skips, saying why, only where cgroups cannot be written.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.ops.memory_budget import MACHINE, V1_LIMIT, V2_HIGH, V2_MAX, Budget, BudgetReader
from agent.ops.monitor import Monitor, sample_memory
from agent.settings import MemorySettings
from agent.ops.telemetry import TelemetryCollector
from tests.support.cgroup import Box, CgroupUnavailable
from tests.support.probe import Probe
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav

MB = 1024 * 1024
GB = 1024 * MB
V1_NO_LIMIT = "9223372036854771712"


def big_machine() -> Budget:
    """24 GB with 1 GB used: every percentage of it is far below any threshold."""
    return Budget(limit_bytes=24 * GB, used_bytes=1 * GB, source=MACHINE)


def write(folder: Path, **files: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (folder / name.replace("__", ".")).write_text(f"{value}\n")
    return folder


def reader(root: Path, proc_cgroup: str, machine=big_machine) -> BudgetReader:
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    return BudgetReader(cgroup_root=root, proc_cgroup=proc, machine=machine)


def v2_service(root: Path, current: int, max_: object = "max", high: object = "max", inactive: int = 0) -> Path:
    write(root, cgroup__controllers="cpuset cpu io memory pids")
    write(root / "system.slice", memory__current=current + 50 * MB, memory__max="max", memory__high="max",
          memory__stat=f"anon 1\ninactive_file 0\n")
    return write(root / "system.slice" / "voice-agent.service", memory__current=current, memory__max=max_,
                 memory__high=high, memory__stat=f"anon {current}\nactive_file 0\ninactive_file {inactive}\n")


SERVICE = "0::/system.slice/voice-agent.service\n"


# --- cgroup v2 --------------------------------------------------------------------------------


def test_v2_memory_max_is_the_budget_when_tighter_than_the_machine(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v2_service(root, current=300 * MB, max_=400 * MB, inactive=20 * MB)
    budget = reader(root, SERVICE).read()
    assert budget == Budget(limit_bytes=400 * MB, used_bytes=280 * MB, source=V2_MAX,
                            cgroup="/system.slice/voice-agent.service")
    assert budget.used_percent == 70.0 and budget.available_bytes == 120 * MB
    assert budget.as_dict() == {"budget_mb": 400.0, "used_mb": 280.0, "available_mb": 120.0, "used_percent": 70.0,
                                "limit_source": "cgroup v2 memory.max", "cgroup": "/system.slice/voice-agent.service"}


def test_v2_max_means_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v2_service(root, current=300 * MB)
    assert reader(root, SERVICE).read() == big_machine()


def test_v2_memory_high_below_max_is_the_budget(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v2_service(root, current=200 * MB, max_=400 * MB, high=300 * MB)
    budget = reader(root, SERVICE).read()
    assert (budget.source, budget.limit_bytes, budget.used_bytes) == (V2_HIGH, 300 * MB, 200 * MB)


def test_a_parent_limit_with_less_left_wins(tmp_path: Path) -> None:
    """The slice's usage counts its other services too: 20 MB left there beats 300 MB left in ours."""
    root = tmp_path / "cg"
    v2_service(root, current=100 * MB, max_=400 * MB)
    write(root / "system.slice", memory__max=170 * MB)  # usage 150 MB (ours + 50 MB of siblings)
    budget = reader(root, SERVICE).read()
    assert (budget.cgroup, budget.limit_bytes, budget.used_bytes) == ("/system.slice", 170 * MB, 150 * MB)


def test_the_machine_wins_when_it_is_tighter(tmp_path: Path) -> None:
    """MemoryMax=8G on a 512 MB Pi: the Pi's memory is the budget."""
    root = tmp_path / "cg"
    v2_service(root, current=100 * MB, max_=8 * GB)
    pi = Budget(limit_bytes=430 * MB, used_bytes=200 * MB, source=MACHINE)
    assert reader(root, SERVICE, machine=lambda: pi).read() == pi


def test_a_cgroup_without_the_memory_controller_is_not_a_limit(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root, cgroup__controllers="cpu pids")
    write(root / "system.slice" / "voice-agent.service", cgroup__procs="1")  # no memory.* files
    assert reader(root, SERVICE).read() == big_machine()


def test_inside_a_container_the_mount_root_is_our_cgroup(tmp_path: Path) -> None:
    """/proc/self/cgroup names the host's path; the container sees its own cgroup at the mount root."""
    root = tmp_path / "cg"
    write(root, cgroup__controllers="cpu memory", memory__current=100 * MB, memory__max=256 * MB,
          memory__stat="inactive_file 0\n")
    budget = reader(root, "0::/docker/0123abcd\n").read()
    assert (budget.source, budget.limit_bytes, budget.cgroup) == (V2_MAX, 256 * MB, "/")


# --- cgroup v1 and hybrid ----------------------------------------------------------------------


def v1_group(root: Path, limit: object, usage: int, inactive: int = 0) -> None:
    write(root / "memory", memory__limit_in_bytes=V1_NO_LIMIT, memory__usage_in_bytes=2 * GB,
          memory__stat="total_inactive_file 0\n")
    write(root / "memory" / "voice-agent", memory__limit_in_bytes=limit, memory__usage_in_bytes=usage,
          memory__stat=f"cache 1\ninactive_file {inactive}\ntotal_inactive_file {inactive}\n")


V1_PROC = "5:cpu,cpuacct:/\n4:memory:/voice-agent\n1:name=systemd:/voice-agent\n0::/voice-agent\n"


def test_v1_limit_in_bytes(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v1_group(root, limit=448 * MB, usage=200 * MB, inactive=10 * MB)
    budget = reader(root, V1_PROC).read()
    assert budget == Budget(limit_bytes=448 * MB, used_bytes=190 * MB, source=V1_LIMIT, cgroup="/voice-agent")
    assert budget.as_dict()["limit_source"] == "cgroup v1 memory.limit_in_bytes"


def test_v1_no_limit_is_the_machine(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v1_group(root, limit=V1_NO_LIMIT, usage=200 * MB)
    assert reader(root, V1_PROC).read() == big_machine()


def test_hybrid_with_the_memory_controller_in_v1(tmp_path: Path) -> None:
    """Debian's hybrid layout (as on this machine): cgroup2 at unified/ without memory, v1 memory/."""
    root = tmp_path / "cg"
    write(root / "unified", cgroup__controllers="hugetlb")
    write(root / "unified" / "voice-agent", cgroup__procs="1")
    v1_group(root, limit=300 * MB, usage=100 * MB)
    budget = reader(root, V1_PROC).read()
    assert (budget.source, budget.limit_bytes) == (V1_LIMIT, 300 * MB)


@pytest.mark.parametrize("proc_text", ["", "garbage\n", "0::/gone\n4:memory:/gone\n"])
def test_no_cgroup_or_unreadable_means_the_machine(tmp_path: Path, proc_text: str) -> None:
    assert reader(tmp_path / "absent", proc_text).read() == big_machine()
    assert BudgetReader(cgroup_root=tmp_path, proc_cgroup=tmp_path / "no-such-file",
                        machine=big_machine).read() == big_machine()


def test_a_corrupt_limit_file_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v2_service(root, current=100 * MB, max_="not-a-number")
    assert reader(root, SERVICE).read() == big_machine()


# --- the monitor and telemetry on top of it ----------------------------------------------------


def test_levels_follow_the_cgroup_limit_not_the_free_machine(tmp_path: Path) -> None:
    """warn 80 / critical 92 / hysteresis 3 of a 400 MB limit, while the machine is 4 % used."""
    root = tmp_path / "cg"
    service = v2_service(root, current=100 * MB, max_=400 * MB)
    monitor = Monitor(MemorySettings(), paths=lambda: [], on_alert=lambda a: None,
                      reader=reader(root, SERVICE))

    def at(used_mb: int) -> list:
        (service / "memory.current").write_text(f"{used_mb * MB}\n")
        return [a for a in monitor.poll() if a.kind == "memory"]

    assert at(100) == [] and monitor.level == "ok"
    assert monitor.budget() == {"budget_mb": 400.0, "used_mb": 100.0, "available_mb": 300.0, "used_percent": 25.0,
                                "limit_source": "cgroup v2 memory.max"}
    [warning] = at(330)  # 82.5 %
    assert warning.level == "warning" and warning.data["limit_source"] == "cgroup v2 memory.max"
    [critical] = at(380)  # 95 %
    assert critical.level == "critical" and monitor.critical
    assert critical.data["budget_mb"] == 400.0 and critical.data["used_mb"] == 380.0
    assert critical.data["used_percent"] == 95.0 and critical.data["available_mb"] == 20.0
    assert at(360) == [] and monitor.critical, "90 %: hysteresis holds critical above 89 %"
    [down] = at(350)  # 87.5 %
    assert down.level == "warning" and down.data["previous"] == "critical"
    [ok] = at(300)  # 75 %
    assert ok.level == "ok"


def test_min_available_floor_is_of_the_budget(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    service = v2_service(root, current=100 * MB, max_=448 * MB)
    settings = MemorySettings(warn_percent=99, critical_percent=100, min_available_mb=64)
    monitor = Monitor(settings, paths=lambda: [], on_alert=lambda a: None, reader=reader(root, SERVICE))
    assert monitor.poll() == []
    (service / "memory.current").write_text(f"{400 * MB}\n")  # 48 MB left of 448
    [alert] = monitor.poll()
    assert alert.level == "critical" and alert.data["threshold_unit"] == "mb"


def test_sample_and_budget_before_the_first_sample(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v1_group(root, limit=448 * MB, usage=112 * MB)
    fake = reader(root, V1_PROC)
    monitor = Monitor(MemorySettings(), paths=lambda: [], on_alert=lambda a: None, reader=fake)
    assert monitor.budget()["limit_source"] == V1_LIMIT and monitor.budget()["budget_mb"] == 448.0
    sample = sample_memory(reader=fake)
    assert (sample.budget_mb, sample.used_mb, sample.used_percent) == (448.0, 112.0, 25.0)
    # Under a cgroup limit the largest process is looked for in our own process tree.
    assert sample.top_process["pid"] == os.getpid()


def test_telemetry_reports_the_budget_and_its_source(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v1_group(root, limit=448 * MB, usage=224 * MB)
    figures = TelemetryCollector(reader=reader(root, V1_PROC)).collect({})
    memory = figures["memory"]
    assert memory["budget_mb"] == 448.0 and memory["used_percent"] == 50.0 and memory["available_mb"] == 224.0
    assert memory["limit_source"] == "cgroup v1 memory.limit_in_bytes" and memory["cgroup"] == "/voice-agent"
    assert memory["machine_available_mb"] > 448


# --- end to end: a real cgroup on a machine with plenty free -----------------------------------

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
