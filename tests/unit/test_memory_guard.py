"""Memory the kernel never has to enforce, part by part (issue #27 point 3): the OOM-kill counter
of a (fake) cgroup, the watch that reports its rises, admission by the engine's need, the retry
policy, and `fleet` as a value only the local file may choose. The end-to-end tests with a real
cgroup are tests/e2e/test_memory_never_enforced.py and tests/e2e/test_fleet_offload.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.config.remote import forbidden
from agent.errors import AudioError, EngineError
from agent.jobs.admission import Admission
from agent.jobs.retry import Retries, RetryPolicy
from agent.jobs.slot import JobSlot
from agent.ops.alerts import AlertBoard
from agent.memory_budget import MACHINE, Budget, BudgetReader
from agent.ops.memory_guard import MemoryGuard
from agent.ops.oom_watch import OomWatch
from agent.settings import DEVICE, JobsSettings, MemorySettings, Settings, TranscriberSettings, WhisperCppSettings
from agent.mqtt.topics import Topics

MB = 1024 * 1024


def v1_cgroup(tmp_path: Path, kills: int, limit: int = 200 * MB, usage: int = 60 * MB) -> BudgetReader:
    own = tmp_path / "cg" / "memory" / "va"
    own.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cg" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (own / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (own / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (own / "memory.stat").write_text("total_inactive_file 0\n")
    (own / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/va\n1:cpu:/\n")
    return BudgetReader(cgroup_root=tmp_path / "cg", proc_cgroup=proc,
                        machine=lambda: Budget(limit_bytes=64 * 1024 * MB, used_bytes=MB, source=MACHINE))


def test_oom_kills_are_read_from_the_own_cgroup_v1_and_v2(tmp_path: Path) -> None:
    assert v1_cgroup(tmp_path, kills=3).oom_kills() == 3
    root = tmp_path / "v2"
    (root / "svc").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")
    (root / "svc" / "memory.events").write_text("low 0\nhigh 4\nmax 9\noom 2\noom_kill 2\n")
    proc = tmp_path / "proc2"
    proc.write_text("0::/svc\n")
    assert BudgetReader(cgroup_root=root, proc_cgroup=proc).oom_kills() == 2
    proc.write_text("garbage\n")
    assert BudgetReader(cgroup_root=root, proc_cgroup=proc).oom_kills() is None


def test_the_watch_reports_each_rise_and_takes_a_fall_as_a_new_baseline(tmp_path: Path) -> None:
    reader = v1_cgroup(tmp_path, kills=1)
    seen: list[tuple[int, int]] = []
    watch = OomWatch(lambda new, total: seen.append((new, total)), reader)
    watch.total = reader.oom_kills()
    watch.poll()
    assert seen == []
    v1_cgroup(tmp_path, kills=4)
    watch.poll()
    assert seen == [(3, 4)]
    v1_cgroup(tmp_path, kills=0)   # moved to another cgroup
    watch.poll()
    v1_cgroup(tmp_path, kills=1)
    watch.poll()
    assert seen == [(3, 4), (1, 1)]


def whisper_settings(tmp_path: Path, admit: bool = True) -> Settings:
    model = tmp_path / "ggml.bin"
    model.write_bytes(b"\0" * (150 * MB // 1024))   # 0.15 MB: the need is program overhead + model
    t = TranscriberSettings(engine="whisper_cpp", whisper_cpp=WhisperCppSettings(model=str(model)))
    return Settings(transcriber=t, memory=MemorySettings(admit_by_engine_need=admit),
                    jobs=JobsSettings(retry_after_s=3))


def test_admission_refuses_a_job_whose_engine_peak_does_not_fit_and_alerts_once(tmp_path: Path) -> None:
    events: list[tuple[str, dict]] = []
    board = AlertBoard(lambda e, b: events.append((e, b)), Topics("voice", "dev"))
    reader = v1_cgroup(tmp_path, kills=0, limit=100 * MB, usage=60 * MB)   # 40 MB free < 80 MB need
    guard = MemoryGuard(board, whisper_settings(tmp_path), reader)
    admission = Admission(JobSlot(1))
    admission.set_need_check(guard.check)
    for _ in range(3):
        refusal = admission.try_admit(request=True)
        assert refusal.code == "memory_pressure" and "whisper_cpp" in refusal.message, refusal
    alerts = [b for e, b in events if e == "alert"]
    assert len(alerts) == 1 and alerts[0]["reason"] == "engine_need" and alerts[0]["level"] == "warning"
    assert alerts[0]["need_mb"] >= 80 and alerts[0]["budget_mb"] == 100.0 and alerts[0]["available_mb"] == 40.0
    assert admission.admit(timeout=0.05) is None, "an inbox feeder waits"

    v1_cgroup(tmp_path, kills=0, limit=400 * MB, usage=60 * MB)
    ticket = admission.try_admit(request=True)
    assert not hasattr(ticket, "code"), ticket
    ticket.release()
    assert [b["level"] for e, b in events if e == "alert"] == ["warning", "ok"]

    # switched off, or an engine whose model stays loaded: nothing to check
    guard.reconfigure(whisper_settings(tmp_path, admit=False))
    v1_cgroup(tmp_path, kills=0, limit=100 * MB, usage=60 * MB)
    assert guard.check() is None
    guard.reconfigure(replace(whisper_settings(tmp_path), transcriber=TranscriberSettings(engine="pocketsphinx")))
    assert guard.check() is None


def test_an_oom_kill_raises_a_critical_alert_that_the_next_done_job_clears(tmp_path: Path) -> None:
    events: list[tuple[str, dict]] = []
    board = AlertBoard(lambda e, b: events.append((e, b)), Topics("voice", "dev"))
    guard = MemoryGuard(board, whisper_settings(tmp_path), v1_cgroup(tmp_path, kills=1))
    guard.on_oom(1, 1)
    body = board.current["memory"]
    assert body["level"] == "critical" and body["reason"] == "oom_kill" and body["engine"] == "whisper_cpp"
    guard.observe_job("job", {"state": "failed"})
    assert "memory" in board.current
    guard.observe_job("job", {"state": "done"})
    assert "memory" not in board.current


def test_only_failures_that_are_not_the_input_s_fault_are_retried_with_backoff_and_bounded() -> None:
    policy = RetryPolicy(tries=3, backoff_s=2)
    killed = EngineError("killed", code="engine_killed")
    assert [policy.delay(killed, n) for n in (1, 2, 3)] == [2, 4, None]
    for code in ("engine_unavailable", "engine_timeout"):
        assert policy.delay(EngineError("x", code=code), 1) == 2
    assert policy.delay(AudioError("bad", code="corrupt"), 1) is None
    assert policy.delay(EngineError("rejected", code="engine_error"), 1) is None
    retries = Retries(policy)
    assert retries.after_failure("a", killed) == (2, 1)
    assert retries.after_failure("a", killed) == (4, 2)
    assert retries.after_failure("a", killed) == (None, 3)
    assert retries.after_failure("a", killed) == (2, 1), "a finished key starts again"
    unanswered = EngineError("no fleet worker answered", code="engine_unavailable", unanswered=True)
    assert [policy.delay(unanswered, n) for n in (1, 3, 50)] == [2, 8, 600], "kept queued while the fleet is away"


def test_fleet_engine_is_a_value_only_the_local_file_may_choose() -> None:
    assert forbidden({"transcriber": {"engine": "fleet"}}, DEVICE) == ["transcriber.engine"]
    assert forbidden({"transcriber": {"engine": "pocketsphinx"}}, DEVICE) == []
    assert forbidden({"transcriber": {"fleet": {"fallback": "whisper_cpp"}}}, DEVICE) == ["transcriber.fleet.fallback"]
