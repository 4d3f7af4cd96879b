"""The memory the agent may really use: the machine's, or its cgroup's limit when that is tighter.

Under systemd's `MemoryMax=`, in a container, or inside the envelope harness, the kernel OOM-kills
the cgroup when *its* usage reaches *its* limit, whatever the machine has free. Levels computed
from `psutil.virtual_memory()` alone stay "ok" until the kill. So every sample compares:

- the machine: total memory, used = total - available (psutil's figure: page cache that can be
  reclaimed is not "used");
- each memory limit on the way from the agent's own cgroup up to the root of its hierarchy
  (cgroup v2 `memory.max` and `memory.high`, cgroup v1 `memory.limit_in_bytes`), with that
  cgroup's usage (`memory.current` / `memory.usage_in_bytes`, which counts every process in it:
  the engine servers the agent starts live in the same cgroup) less its inactive file cache,
  the part the kernel drops before it kills anyone (the "working set" that the kubelet and
  `docker stats` report).

The budget is the candidate with the least memory left; a limit on a parent counts because its
usage includes siblings. Nothing here raises for a missing or unreadable cgroup file: a host
without cgroups, or with the memory controller off (Raspberry Pi OS until `cgroup_enable=memory`),
simply has the machine as its budget. The cgroup root and `/proc/self/cgroup` are parameters so
tests build fake hierarchies in a tmp folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

MB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 4 KiB pages);
# anything this large is no limit on any real machine.
_V1_UNLIMITED = 1 << 60

MACHINE = "machine"
V2_MAX = "cgroup v2 memory.max"
V2_HIGH = "cgroup v2 memory.high"
V1_LIMIT = "cgroup v1 memory.limit_in_bytes"


@dataclass(frozen=True)
class Budget:
    """One reading of the budget that applies: its limit, what is used of it, and which limit it is."""

    limit_bytes: int
    used_bytes: int
    source: str  # MACHINE, V2_MAX, V2_HIGH or V1_LIMIT
    cgroup: str = ""  # the cgroup whose limit applies, as in /proc/self/cgroup ("" for the machine)

    @property
    def available_bytes(self) -> int:
        return max(0, self.limit_bytes - self.used_bytes)

    @property
    def used_percent(self) -> float:
        return round(self.used_bytes / self.limit_bytes * 100, 1) if self.limit_bytes > 0 else 100.0

    @property
    def from_cgroup(self) -> bool:
        return self.source != MACHINE

    def as_dict(self) -> dict[str, Any]:
        """The figures `state`, telemetry and alerts report (MB rounded to 0.1)."""
        return {"budget_mb": _mb(self.limit_bytes), "used_mb": _mb(self.used_bytes),
                "available_mb": _mb(self.available_bytes), "used_percent": self.used_percent,
                "limit_source": self.source, "cgroup": self.cgroup}


def machine_budget() -> Budget:
    vm = psutil.virtual_memory()
    return Budget(limit_bytes=int(vm.total), used_bytes=int(vm.total - vm.available), source=MACHINE)


class BudgetReader:
    """Reads the budget on demand; cheap (a few small files), so it is read on every sample.

    Nothing is cached: a process moved to another cgroup, or a limit changed with
    `systemctl set-property`, is seen on the next sample.
    """

    def __init__(self, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP,
                 machine: Callable[[], Budget] = machine_budget) -> None:
        self.cgroup_root = cgroup_root
        self.proc_cgroup = proc_cgroup
        self._machine = machine

    def read(self) -> Budget:
        candidates = [self._machine(), *self.cgroup_limits()]
        return min(candidates, key=lambda b: (b.available_bytes, b.limit_bytes))

    def cgroup_limits(self) -> list[Budget]:
        """Every memory limit that applies to this process, from its own cgroup up to the root."""
        try:
            paths = _parse_proc_cgroup(self.proc_cgroup.read_text())
        except OSError as exc:
            log.debug("cannot read %s: %s", self.proc_cgroup, exc)
            return []
        found: list[Budget] = []
        v2_root = self._v2_root()
        if v2_root is not None and "v2" in paths:
            found += _walk(v2_root, paths["v2"], _v2_limits)
        v1_root = self.cgroup_root / "memory"
        if "memory" in paths and (v1_root / "memory.limit_in_bytes").is_file():
            found += _walk(v1_root, paths["memory"], _v1_limits)
        return found

    def oom_kills(self) -> int | None:
        """Processes the kernel OOM-killed in this process's own cgroup (v2 `memory.events`,
        v1 `memory.oom_control`, both `oom_kill`), or None where no such counter can be read.

        Only the own cgroup: that is where the agent's engine children live, and a parent's
        count would also take in its siblings' kills. v2 counts kills in descendants too."""
        try:
            paths = _parse_proc_cgroup(self.proc_cgroup.read_text())
        except OSError:
            return None
        candidates: list[Path] = []
        v2_root = self._v2_root()
        if v2_root is not None and "v2" in paths:
            candidates.append(_own(v2_root, paths["v2"]) / "memory.events")
        if "memory" in paths:
            candidates.append(_own(self.cgroup_root / "memory", paths["memory"]) / "memory.oom_control")
        for file in candidates:
            count = _counter(file, "oom_kill")
            if count is not None:
                return count
        return None

    def _v2_root(self) -> Path | None:
        """The cgroup2 mount: the root itself (unified), or root/unified (hybrid, as on Debian 10)."""
        for candidate in (self.cgroup_root, self.cgroup_root / "unified"):
            if (candidate / "cgroup.controllers").is_file():
                return candidate
        return None


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """{"v2": path} for the `0::path` line, {"memory": path} for the v1 memory controller's line."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["memory"] = path
    return paths


def _own(mount: Path, path: str) -> Path:
    """The process's cgroup folder under `mount` (the mount itself inside a cgroup namespace)."""
    relative = path.strip("/")
    here = mount / relative if relative else mount
    return here if here.is_dir() else mount


def _counter(file: Path, key: str) -> int | None:
    """The value of `key` in a flat-keyed cgroup file ("key value" lines), None if absent."""
    try:
        for line in file.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _walk(mount: Path, path: str, limits: Callable[[Path, str], list[Budget]]) -> list[Budget]:
    """Limits of the process's cgroup and of each parent up to the mount.

    Inside a cgroup namespace (a container) /proc/self/cgroup may name a path that is not under
    the mount seen here; the mount's root is then this process's own cgroup.
    """
    relative = path.strip("/")
    here = mount / relative if relative else mount
    if not here.is_dir():
        here, relative = mount, ""
    found: list[Budget] = []
    while True:
        name = "/" + relative
        try:
            found += limits(here, name)
        except (OSError, ValueError) as exc:
            log.debug("cgroup %s unreadable: %s", here, exc)
        if here == mount or not relative:
            return found
        here = here.parent
        relative = relative.rpartition("/")[0]


def _v2_limits(folder: Path, name: str) -> list[Budget]:
    if not (folder / "memory.current").is_file():
        return []  # the memory controller is not enabled for this cgroup (or this is the root)
    limits = []
    for file, source in (("memory.max", V2_MAX), ("memory.high", V2_HIGH)):
        try:
            raw = (folder / file).read_text().strip()
        except FileNotFoundError:
            continue
        if raw != "max":
            limits.append((int(raw), source))
    if not limits:
        return []
    used = _working_set(folder / "memory.current", folder / "memory.stat", "inactive_file")
    return [Budget(limit_bytes=limit, used_bytes=used, source=source, cgroup=name) for limit, source in limits]


def _v1_limits(folder: Path, name: str) -> list[Budget]:
    limit = int((folder / "memory.limit_in_bytes").read_text().strip())
    if limit >= _V1_UNLIMITED:
        return []
    used = _working_set(folder / "memory.usage_in_bytes", folder / "memory.stat", "total_inactive_file")
    return [Budget(limit_bytes=limit, used_bytes=used, source=V1_LIMIT, cgroup=name)]


def _working_set(usage_file: Path, stat_file: Path, inactive_key: str) -> int:
    usage = int(usage_file.read_text().strip())
    inactive = 0
    try:
        for line in stat_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
                break
    except (OSError, ValueError):
        pass  # no memory.stat: count the cache as used, which errs on the safe side
    return max(0, usage - inactive)


def _mb(n: int) -> float:
    return round(n / MB, 1)
