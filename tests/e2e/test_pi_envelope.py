"""The Pi envelope in CI size, and the Pi profile it runs.

`python -m bench envelope` is the full run (every engine variant, the table in
docs/performance.md); here the same harness runs the Pi profile (config.pi.yaml) with a small
workload inside a 448 MB, 0.6-core cgroup: a burst of inbox files, a live stream on standard
input and requests at once. It must end with no OOM kill, no lost or failed job, the agent still
running, and the cgroup's peak below the MemoryHigh of the shipped systemd unit. Skipped, saying
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
    pytest.importorskip("pocketsphinx", reason="the Pi profile's engine (pip install voice-agent[pocketsphinx])")
    result = subprocess.run([*voice_agent_cmd(), "check-config", str(PROFILE)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["transcriber"]["engine"] == "pocketsphinx"
    assert effective["summarizer"]["engine"] == "extractive"
    assert effective["jobs"]["max_concurrent"] == 1, "overlap off"


def test_pi_profile_inside_the_envelope(broker: Broker, tmp_path: Path) -> None:
    pytest.importorskip("pocketsphinx", reason="the Pi profile's engine (pip install voice-agent[pocketsphinx])")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng makes the speech (apt-get install espeak-ng)")
    from bench.envelope import PI_CPU, PI_MEMORY_MB, run_variant, workloads
    try:
        Box.create(1 << 30, PI_CPU, name="va-probe").close()
    except CgroupUnavailable as exc:
        pytest.skip(f"cgroups cannot be written here: {exc}")

    load = workloads()["quick"]
    out = run_variant("pocketsphinx", tmp_path, broker, load, PI_MEMORY_MB, PI_CPU, log=lambda *a: None)

    assert out.oom_kills == 0, out.row()
    assert out.alive and out.exit_code == 0, out.row()
    assert out.lost == [] and out.failed == 0, out.row()
    assert out.done.get("inbox", 0) == load.files, out.row()
    assert out.done.get("mic", 0) >= 1, out.row()
    answered_transcribe = out.done.get("request", 0) + out.busy + out.memory_pressure
    assert answered_transcribe == (load.requests + 1) // 2, out.row()
    assert 0 < out.peak_ws_mb < unit_limit_mb("MemoryHigh"), out.row()
    assert out.rtf["all"] > 0, "real-time factors are measured (their budget is the bench's, not a test's)"
    assert out.kind in ("cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes")
