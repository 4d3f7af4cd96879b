"""The memory budget: the machine's memory or the agent's cgroup limit, whichever is tighter (issue #17).

These tests build fake cgroup hierarchies (v2, v1, hybrid) in tmp folders and hand them to
`BudgetReader`. tests/e2e/test_memory_budget_cgroup.py runs `voice-agent run` inside a real
cgroup with a small memory limit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.memory_budget import MACHINE, V1_LIMIT, V2_HIGH, V2_MAX, Budget, BudgetReader
from agent.ops.monitor import Monitor
from agent.ops.sampling import sample_memory
from agent.settings import MemorySettings
from agent.ops.telemetry import TelemetryCollector


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
