"""A hung model server times out, is restarted, and later jobs succeed (agent subprocess, real Mosquitto)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.support.broker import free_port
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav
from tests.support.inbox import drop
from tests.support.llama_standin import REPLY_PREFIX, llama_standin_command


def _pids(pidfile: Path) -> list[int]:
    return [int(x) for x in pidfile.read_text().split()] if pidfile.exists() else []


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_hung_summarizer_server_times_out_is_restarted_and_later_jobs_succeed(tmp_path, make_agent, probe):
    pidfile = tmp_path / "llama.pids"
    agent = make_agent({
        "summarizer": {"engine": "llama_server", "min_words": 1, "timeout_s": 3,
                       "llama_server": {"command": llama_standin_command(pidfile=pidfile),
                                        "port": free_port(), "timeout_s": 3, "start_timeout_s": 30,
                                        "health_interval_s": 600}},
    }).start(probe)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["summarizer"]["ready"], timeout=30,
                   what="summarizer ready")
    first = _pids(pidfile)
    assert len(first) == 1
    drop(agent.inbox, "before.wav", tone_wav(0.3))
    ok = probe.wait_for(f"{agent.root}/event/summary", what="summary from the server")[0].json
    assert ok["text"].startswith(REPLY_PREFIX) and ok["engine"] == "llama_server"

    os.kill(first[0], signal.SIGSTOP)            # the server stops answering, its socket stays open
    t0 = time.monotonic()
    drop(agent.inbox, "hung.wav", tone_wav(0.4))
    # The transcript is kept: the summary falls back to extractive after summarizer.timeout_s (issue 15).
    done = wait_until(lambda: (agent.inbox / "processed" / "hung.wav.json").exists(), 30, "hung.wav processed")
    failed_after = time.monotonic() - t0
    record = json.loads((agent.inbox / "processed" / "hung.wav.json").read_text())
    assert done and record["summary_fallback"]["error"]["code"] == "engine_timeout", record
    assert record["engines"]["summarizer"] == "extractive"
    wait_until(lambda: len(_pids(pidfile)) == 2, 30, "the server restarted")
    assert wait_until(lambda: _gone(first[0]), 10, "the hung server killed")
    restarted_after = time.monotonic() - t0

    for i in range(3):
        drop(agent.inbox, f"after{i}.wav", tone_wav(0.5 + i / 10))
    summaries = probe.wait_for(f"{agent.root}/event/summary", lambda m: m.json["engine"] == "llama_server",
                               count=4, timeout=30, what="later summaries")
    assert all(s.json["text"].startswith(REPLY_PREFIX) for s in summaries)
    wait_until(lambda: all((agent.inbox / "processed" / f"after{i}.wav.json").exists() for i in range(3)), 15,
               "the later files in processed/")
    state = probe.request(agent.root, "state")["data"]
    assert state["engines"]["summarizer"]["ready"] is True
    fallback = [m.json for m in probe.on(f"{agent.root}/event/summary") if m.json["source"]["name"] == "hung.wav"]
    assert fallback and fallback[0]["fallback"] is True and fallback[0]["error"]["code"] == "engine_timeout"
    print(f"\nhung server: extractive summary (engine_timeout) after {failed_after:.1f}s, server restarted after "
          f"{restarted_after:.1f}s (pid {first[0]} -> {_pids(pidfile)[1]}), 3 later jobs succeeded")
