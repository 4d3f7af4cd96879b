"""A real cgroup with a memory limit (and optionally a CPU quota) for tests and the envelope bench.

Root may create cgroups on most Linux machines; where that is impossible (no cgroup filesystem,
read-only mount, memory controller disabled, not root) `Box.create` raises `CgroupUnavailable`
with the reason, so a caller skips with it. cgroup v2 is used when its memory controller is
available, else cgroup v1 (this machine mounts v1's `memory` and `cpu` hierarchies writable and a
cgroup2 hierarchy without the memory controller).

A v1 box is created *under the creating process's own cgroup* of each hierarchy: the box's
usage then also counts in whatever cgroup the test run itself is accounted in. In v2 a cgroup
with processes cannot delegate controllers to children, so the box goes under the first
ancestor (or the root) that has the controllers enabled for its children.

Processes join with `add(pid)` right after they are started (before they load anything large);
whatever they start afterwards is born inside. `close()` kills what is still inside (only
processes this run started: nothing else is in a fresh cgroup) and removes the cgroup.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """cgroups cannot be written here; the message says why."""


def _own_paths() -> dict[str, str]:
    """{"v2": path, "<controller>": path} from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            paths["v2"] = path
        for c in controllers.split(","):
            if c:
                paths[c] = path
    return paths


@dataclass
class Box:
    kind: str  # "v2" | "v1"
    memory_dir: Path
    cpu_dir: Path | None
    memory_max: int
    cpu_quota: float | None
    _created: list[Path] = field(default_factory=list)

    # --- creation -------------------------------------------------------------------------

    @classmethod
    def create(cls, memory_max: int, cpu_quota: float | None = None, name: str = "va",
               cpu_period_us: int = 100_000) -> "Box":
        """A fresh cgroup limited to `memory_max` bytes (no swap) and `cpu_quota` cores (None = no quota),
        granted per CFS period of `cpu_period_us` (shorter: finer-grained bursts at a small quota)."""
        if os.geteuid() != 0:
            raise CgroupUnavailable("not root: creating cgroups needs root")
        if not ROOT.is_dir():
            raise CgroupUnavailable(f"{ROOT} does not exist: no cgroup filesystem")
        unique = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        reasons: list[str] = []
        for make in (cls._v2, cls._v1):
            try:
                return make(unique, memory_max, cpu_quota, cpu_period_us)
            except (CgroupUnavailable, OSError) as exc:
                reasons.append(str(exc))
        raise CgroupUnavailable("; ".join(reasons))

    @classmethod
    def _v2(cls, unique: str, memory_max: int, cpu_quota: float | None, period: int) -> "Box":
        mount = next((m for m in (ROOT, ROOT / "unified") if (m / "cgroup.controllers").is_file()), None)
        if mount is None:
            raise CgroupUnavailable("cgroup v2: not mounted")
        if "memory" not in (mount / "cgroup.controllers").read_text().split():
            raise CgroupUnavailable("cgroup v2: the memory controller is not available in it")
        wanted = ["memory"] + (["cpu"] if cpu_quota is not None else [])
        own = _own_paths().get("v2", "/").strip("/")
        parents = [mount / own] if own else []
        while own:
            own = own.rpartition("/")[0]
            parents.append(mount / own if own else mount)
        for parent in parents or [mount]:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            missing = [c for c in wanted if c not in enabled]
            if missing and parent != mount:
                continue  # a cgroup with processes cannot delegate: try its parent
            try:
                if missing:
                    (parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in missing))
                box_dir = parent / unique
                box_dir.mkdir()
            except OSError as exc:
                raise CgroupUnavailable(f"cgroup v2: cannot create a cgroup under {parent}: {exc}") from exc
            box = cls("v2", box_dir, box_dir if cpu_quota is not None else None, memory_max, cpu_quota, [box_dir])
            try:
                (box_dir / "memory.max").write_text(str(memory_max))
                if (box_dir / "memory.swap.max").exists():
                    (box_dir / "memory.swap.max").write_text("0")
                if cpu_quota is not None:
                    (box_dir / "cpu.max").write_text(f"{int(cpu_quota * period)} {period}")
            except OSError as exc:
                box.close()
                raise CgroupUnavailable(f"cgroup v2: cannot set limits: {exc}") from exc
            return box
        raise CgroupUnavailable("cgroup v2: no cgroup with the memory controller delegated")

    @classmethod
    def _v1(cls, unique: str, memory_max: int, cpu_quota: float | None, period: int) -> "Box":
        own = _own_paths()
        memory_mount = ROOT / "memory"
        if "memory" not in own or not (memory_mount / "memory.limit_in_bytes").is_file():
            raise CgroupUnavailable("cgroup v1: no memory hierarchy mounted")
        created: list[Path] = []
        try:
            memory_dir = memory_mount / own["memory"].strip("/") / unique
            memory_dir.mkdir()
            created.append(memory_dir)
            (memory_dir / "memory.limit_in_bytes").write_text(str(memory_max))
            try:  # no swap either (absent when swap accounting is off)
                (memory_dir / "memory.memsw.limit_in_bytes").write_text(str(memory_max))
            except OSError:
                pass
            cpu_dir = None
            if cpu_quota is not None:
                cpu_mount = ROOT / "cpu"
                if "cpu" not in own or not (cpu_mount / "cpu.cfs_quota_us").is_file():
                    raise CgroupUnavailable("cgroup v1: no cpu hierarchy mounted")
                cpu_dir = cpu_mount / own["cpu"].strip("/") / unique
                cpu_dir.mkdir()
                created.append(cpu_dir)
                # Quota before period: each write is checked against the other value (a new cgroup
                # has no quota yet, so any period is accepted after it).
                (cpu_dir / "cpu.cfs_quota_us").write_text(str(int(cpu_quota * period)))
                (cpu_dir / "cpu.cfs_period_us").write_text(str(period))
        except OSError as exc:
            for folder in reversed(created):
                _rmdir(folder)
            raise CgroupUnavailable(f"cgroup v1: cannot create a limited cgroup: {exc}") from exc
        return cls("v1", memory_dir, cpu_dir, memory_max, cpu_quota, created)

    # --- use --------------------------------------------------------------------------------

    @property
    def limit_source(self) -> str:
        """What agent/memory_budget.py calls this box's limit."""
        return "cgroup v2 memory.max" if self.kind == "v2" else "cgroup v1 memory.limit_in_bytes"

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the box."""
        for folder in {self.memory_dir, *([self.cpu_dir] if self.cpu_dir else [])}:
            (folder / "cgroup.procs").write_text(str(pid))

    def set_memory_max(self, memory_max: int) -> None:
        """A new memory limit (no swap) while processes run inside: v1 wants the memory+swap
        limit raised first and lowered last, as it may never be below the memory limit."""
        if self.kind == "v2":
            (self.memory_dir / "memory.max").write_text(str(memory_max))
            self.memory_max = memory_max
            return
        files = ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
        if memory_max < self.memory_max:
            files.reverse()
        for name in files:
            try:
                (self.memory_dir / name).write_text(str(memory_max))
            except FileNotFoundError:
                pass   # no swap accounting
        self.memory_max = memory_max

    def pids(self) -> list[int]:
        text = (self.memory_dir / "cgroup.procs").read_text()
        return [int(p) for p in text.split()]

    def memory_current(self) -> int:
        name = "memory.current" if self.kind == "v2" else "memory.usage_in_bytes"
        return int((self.memory_dir / name).read_text())

    def working_set(self) -> int:
        """Usage less inactive file cache: what the kernel cannot simply drop (agent/memory_budget.py)."""
        key = "inactive_file" if self.kind == "v2" else "total_inactive_file"
        inactive = 0
        for line in (self.memory_dir / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                inactive = int(value)
                break
        return max(0, self.memory_current() - inactive)

    def memory_peak(self) -> int | None:
        """The kernel's own high-water mark, or None where it keeps none (v2 before Linux 5.19)."""
        name = "memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes"
        try:
            return int((self.memory_dir / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """Processes the kernel OOM-killed inside the box (v2 memory.events, v1 memory.oom_control)."""
        name = "memory.events" if self.kind == "v2" else "memory.oom_control"
        for line in (self.memory_dir / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def cpu_throttled(self) -> dict[str, float]:
        """{"periods", "throttled", "throttled_s"} of the CPU quota, {} without one."""
        if self.cpu_dir is None:
            return {}
        stat = dict(line.split(" ", 1) for line in (self.cpu_dir / "cpu.stat").read_text().splitlines()
                    if " " in line)
        if self.kind == "v2":
            throttled_s = int(stat.get("throttled_usec", 0)) / 1e6
        else:
            throttled_s = int(stat.get("throttled_time", 0)) / 1e9
        return {"periods": int(stat.get("nr_periods", 0)), "throttled": int(stat.get("nr_throttled", 0)),
                "throttled_s": round(throttled_s, 1)}

    def close(self, timeout: float = 10.0) -> None:
        """Kill what is still inside (processes this run started), then remove the cgroup."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pids = self.pids()
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for folder in reversed(self._created):
            _rmdir(folder)
        self._created.clear()

    def __enter__(self) -> "Box":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rmdir(folder: Path) -> None:
    for _ in range(50):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # the last process is still being reaped
