"""The shipped systemd unit passes `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO


UNIT = REPO / "systemd" / "voice-agent.service"


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    text = UNIT.read_text()
    exec_start = re.compile(r"^ExecStart=\S+", re.MULTILINE)
    assert len(exec_start.findall(text)) == 1
    # The real binary only exists on an installed device; everything else stays as shipped.
    unit = tmp_path / UNIT.name
    unit.write_text(exec_start.sub("ExecStart=/bin/true", text))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if UNIT.name in line]
    assert result.returncode == 0 and not ours, "\n".join(output)
