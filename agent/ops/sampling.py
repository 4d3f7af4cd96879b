"""One look at memory and disk: the budget that applies, who uses it, and free space.

Kept apart from the trackers (agent.ops.monitor) that turn samples into levels: telemetry and
`doctor` read the same figures without any alerting.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.memory_budget import MACHINE, BudgetReader

MB = 1024 * 1024
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


@dataclass(frozen=True)
class MemorySample:
    """One look at the memory budget and at who uses it.

    used_percent / available_mb are of the budget (budget_mb, from `limit_source`), not
    necessarily of the whole machine.
    """

    used_percent: float
    available_mb: float
    swap_used_percent: float
    agent_rss_mb: float
    children_rss_mb: float
    top_process: dict[str, Any] = field(default_factory=dict)  # {"pid", "name", "rss_mb"}
    budget_mb: float = 0.0
    used_mb: float = 0.0
    limit_source: str = MACHINE

    def budget(self) -> dict[str, Any]:
        """The budget figures that `state` and alerts report."""
        return {"budget_mb": self.budget_mb, "used_mb": self.used_mb, "available_mb": self.available_mb,
                "used_percent": self.used_percent, "limit_source": self.limit_source}


def sample_memory(pid: int | None = None, reader: BudgetReader | None = None) -> MemorySample:
    """Sample the memory budget, the agent's RSS, its children's (engine servers) and the largest process.

    The used share ignores reclaimable page cache (psutil's `available` for the machine, inactive
    file cache for a cgroup): that is what runs out before the OOM killer strikes. Under a cgroup
    limit the largest process is looked for in the agent's own process tree, the only processes
    whose memory that limit holds against it. Processes that vanish or are not ours to read while
    we look are skipped.
    """
    budget = (reader or BudgetReader()).read()
    swap = psutil.swap_memory()
    agent = psutil.Process(pid)
    agent_rss = agent.memory_info().rss
    children = agent.children(recursive=True)
    children_rss = 0
    for child in children:
        try:
            children_rss += child.memory_info().rss
        except _GONE:
            continue
    return MemorySample(
        used_percent=budget.used_percent,
        available_mb=round(budget.available_bytes / MB, 1),
        swap_used_percent=round(swap.percent, 1) if swap.total else 0.0,
        agent_rss_mb=round(agent_rss / MB, 1),
        children_rss_mb=round(children_rss / MB, 1),
        top_process=top_process([agent, *children] if budget.from_cgroup else None),
        budget_mb=round(budget.limit_bytes / MB, 1),
        used_mb=round(budget.used_bytes / MB, 1),
        limit_source=budget.source,
    )


def top_process(among: list[psutil.Process] | None = None) -> dict[str, Any]:
    """The process with the largest RSS (system-wide, or among `among`), {} when none could be read."""
    best: dict[str, Any] = {}
    best_rss = -1
    procs = psutil.process_iter(["pid", "name", "memory_info"]) if among is None else among
    for proc in procs:
        try:
            info = proc.info if among is None else proc.as_dict(["pid", "name", "memory_info"])
        except _GONE:
            continue
        mem = info.get("memory_info")
        if mem is None or mem.rss <= best_rss:
            continue
        best_rss = mem.rss
        best = {"pid": info["pid"], "name": info.get("name") or "?", "rss_mb": round(mem.rss / MB, 1)}
    return best


def disk_free_mb(path: Path) -> float:
    """Free MB for an unprivileged user on the filesystem of `path` (or its nearest existing parent).

    The inbox may not exist yet; its parent tells us about the disk it will live on.
    """
    return shutil.disk_usage(existing(path)).free / MB


def existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (the disk a folder not yet made will live on)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
