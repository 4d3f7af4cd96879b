"""A small compressed file must not cost the agent what decoding it whole at its source rate costs
(issue 22, "One message must not exhaust memory"): FLAC through soundfile is decoded block by block
straight into 16 kHz mono, and audio whose decoded samples cannot fit in the memory budget is
refused from its header, before anything is allocated.

`voice-agent run` runs as a subprocess inside a real cgroup (a 400 MB memory limit, so the budget is
the same on any machine), against a real Mosquitto; its peak memory is read from the kernel
(VmHWM in /proc/<pid>/status). The transcriber is the model-free test engine: what is measured is
the decoder, not a model. Skips, saying why, only where cgroups cannot be written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.cgroup import Box, CgroupUnavailable
from tests.support.inbox import wait_files
from tests.support.probe import Probe

MB = 1024 * 1024
LIMIT = 400 * MB


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory, in bytes (the kernel's own figure)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def silent_flac(path: Path, seconds: int, rate: int, channels: int) -> Path:
    """A FLAC of digital silence: a few hundred KB however long, like the issue's 163 KiB file."""
    import soundfile
    block = np.zeros((rate * 60, channels), dtype=np.int16)
    with soundfile.SoundFile(str(path) + ".part", "w", rate, channels, "PCM_16", format="FLAC") as f:
        for start in range(0, seconds, 60):
            f.write(block[: rate * min(60, seconds - start)])
    os.rename(str(path) + ".part", path)
    return path


def put(src: Path, inbox: Path) -> None:
    """Into the inbox the way a well-behaved producer does: written aside, then renamed."""
    shutil.copyfile(src, inbox / f".{src.name}.part")
    os.rename(inbox / f".{src.name}.part", inbox / src.name)


def test_flac_decodes_into_16k_blocks_and_what_cannot_fit_is_refused(make_agent, probe: Probe,
                                                                      tmp_path: Path) -> None:
    pytest.importorskip("soundfile", reason="the formats extra (soundfile) is not installed")
    try:
        box = Box.create(LIMIT, name="va-decode")
    except CgroupUnavailable as exc:
        pytest.skip(f"cgroups cannot be written here: {exc}")
    files = tmp_path / "files"
    files.mkdir()
    # 20 minutes at 48 kHz stereo: 36.6 MB as 16 kHz mono int16; 110 MB as mono int16 at 48 kHz.
    long_48k = silent_flac(files / "long-48k.flac", 1200, 48000, 2)
    # 2 hours at 16 kHz: 230 MB of int16 (1.4 GB with an engine's float32 copy): cannot fit in 400 MB.
    huge = silent_flac(files / "two-hours.flac", 7200, 16000, 1)
    warm = silent_flac(files / "warm.flac", 2, 44100, 1)
    assert long_48k.stat().st_size < 400_000 and huge.stat().st_size < 1_000_000
    try:
        agent = make_agent({"inbox": {"max_duration_s": 86_400}, "memory": {"interval_s": 0.5}})
        agent.start(None, wait_online=False)
        assert agent.proc is not None
        box.add(agent.proc.pid)
        probe.wait_for(f"{agent.root}/availability", lambda m: m.text == "online", timeout=30, what="online")
        inbox, processed, failed = agent.inbox, agent.inbox / "processed", agent.inbox / "failed"

        # numpy, soundfile and the resampler load with the first audio: not part of what is measured
        put(warm, inbox)
        wait_files(processed, "warm.flac.json", 1, timeout=60)
        before = peak_rss(agent.proc.pid)

        put(long_48k, inbox)
        record = json.loads(wait_files(processed, "long-48k.flac.json", 1, timeout=120)[0].read_text())
        growth = peak_rss(agent.proc.pid) - before
        decoded = 1200 * 16000 * 2
        assert record["audio_s"] == 1200.0 and "audio 1200.00 s" in record["transcript"], record
        print(f"\n20 min 48 kHz stereo FLAC ({long_48k.stat().st_size / 1024:.0f} KiB): decoded "
              f"{decoded / MB:.1f} MB, agent peak +{growth / MB:.1f} MB")
        assert growth < 2 * decoded + 16 * MB, \
            f"decoding cost {growth / MB:.0f} MB for {decoded / MB:.0f} MB of 16 kHz samples"

        before = peak_rss(agent.proc.pid)
        put(huge, inbox)
        refused = json.loads(wait_files(failed, "two-hours.flac.error.json", 1, timeout=60)[0].read_text())
        assert refused["code"] == "too_large" and "memory budget" in refused["message"], refused
        assert (failed / huge.name).exists(), "the file itself is kept in failed/"
        assert peak_rss(agent.proc.pid) - before < 16 * MB, "refused before any sample was decoded"
        assert agent.alive() and box.oom_kills() == 0
    finally:
        box.close()
