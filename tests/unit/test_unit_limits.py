"""The systemd unit's memory and CPU limits fit the Pi envelope (bench/envelope.py)."""

from __future__ import annotations

import re

from tests.support.agent import REPO


UNIT = REPO / "systemd" / "voice-agent.service"


def unit_limit_mb(key: str) -> float:
    """MemoryHigh= / MemoryMax= of the shipped unit, in MB."""
    match = re.search(rf"^{key}=(\d+)([KMG])$", UNIT.read_text(), re.MULTILINE)
    assert match, f"{key}= with a K/M/G size in {UNIT}"
    return int(match.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024}[match.group(2)]


def test_unit_limits_fit_the_envelope() -> None:
    """The unit's hard ceiling is within the envelope the profile was measured in; MemoryHigh below it."""
    from bench.envelope import PI_MEMORY_MB
    high, hard = unit_limit_mb("MemoryHigh"), unit_limit_mb("MemoryMax")
    assert high < hard <= PI_MEMORY_MB
