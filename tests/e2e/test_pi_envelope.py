"""The Pi envelope in CI size, and the Pi profile it runs.

`python -m bench envelope` is the full run (every engine variant, the table in
docs/performance.md); here the same harness runs the Pi profile (config.pi.yaml) with a small
workload inside a 448 MB cgroup at both CPU quotas of the bench (0.1 of one core with a 20 ms
CFS period, the realistic Pi for neural engines, and 0.4): a burst of real recordings in the
inbox, a live stream on standard input and requests at once. It must end with no OOM kill, no
lost or failed job, the agent still running, the cgroup's peak below the MemoryHigh of the
shipped systemd unit, the burst's words right (its word error rate is measured) and no words from
its real non-speech recordings (a scream, laughter, music, noise). Skipped, saying
why, only where cgroups cannot be written or the profile's engine is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.agent import REPO, voice_agent_cmd
from tests.support.broker import Broker
from tests.support.cgroup import Box, CgroupUnavailable


UNIT = REPO / "systemd" / "voice-agent.service"
PROFILE = REPO / "config.pi.yaml"


def unit_limit_mb(key: str) -> float:
    """MemoryHigh= / MemoryMax= of the shipped unit, in MB."""
    match = re.search(rf"^{key}=(\d+)([KMG])$", UNIT.read_text(), re.MULTILINE)
    assert match, f"{key}= with a K/M/G size in {UNIT}"
    return int(match.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024}[match.group(2)]


def test_pi_profile_passes_check_config(tmp_path: Path) -> None:
    """`voice-agent check-config config.pi.yaml` accepts it (schema, and its engines can work here)."""
    pytest.importorskip("moonshine_voice", reason="the Pi profile's engine (pip install voice-agent[moonshine])")
    result = subprocess.run([*voice_agent_cmd(), "check-config", str(PROFILE)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["transcriber"]["engine"] == "moonshine"
    assert effective["summarizer"]["engine"] == "extractive"
    assert effective["jobs"]["max_concurrent"] == 1, "overlap off"


@pytest.mark.parametrize("quota", [0, 1], ids=["0.1-core", "0.4-core"])
def test_pi_profile_inside_the_envelope(broker: Broker, tmp_path: Path, quota: int) -> None:
    pytest.importorskip("moonshine_voice", reason="the Pi profile's engine (pip install voice-agent[moonshine])")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng makes the speech (apt-get install espeak-ng)")
    from bench.envelope import PI_MEMORY_MB, QUOTAS, run_variant, workloads
    cpu, period_us = QUOTAS[quota]
    try:
        Box.create(1 << 30, cpu, name="va-probe", cpu_period_us=period_us).close()
    except CgroupUnavailable as exc:
        pytest.skip(f"cgroups cannot be written here: {exc}")

    load = workloads()["quick"]
    out = run_variant("moonshine", tmp_path, broker, load, PI_MEMORY_MB, cpu, log=lambda *a: None,
                      period_us=period_us)

    assert out.oom_kills == 0, out.row()
    assert out.alive and out.exit_code == 0, out.row()
    assert out.lost == [] and out.failed == 0, out.row()
    assert out.done.get("inbox", 0) == load.files + out.non_speech_files, out.row()
    assert out.done.get("mic", 0) >= 1, out.row()
    answered_transcribe = out.done.get("request", 0) + out.busy + out.memory_pressure
    assert answered_transcribe == (load.requests + 1) // 2, out.row()
    assert 0 < out.peak_ws_mb < unit_limit_mb("MemoryHigh"), out.row()
    assert out.rtf["all"] > 0, "real-time factors are measured (their budget is the bench's, not a test's)"
    assert out.wer is not None and out.wer <= 0.12, out.row()
    assert out.non_speech_files >= 5 and out.non_speech_words == 0, out.row()
    assert out.kind in ("cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes")
