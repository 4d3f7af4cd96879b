"""Soak: many requests and files with faults mixed in, while the agent's RSS, open file
descriptors and threads are watched. They must stay flat: a leak of a few KB per request is
what takes a 512 MB device down after a week.

CI runs the short form (500 requests, 50 files); `make soak` runs SOAK_SCALE=10 (5,000 requests,
500 files). The figures are printed; docs/reliability.md quotes them.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from pathlib import Path

import psutil
import pytest

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.probe import Probe
from tests.support.wavs import tone_wav

SCALE = max(1, int(os.environ.get("SOAK_SCALE", "1")))
REQUESTS = 500 * SCALE
FILES = 50 * SCALE
MB = 1024 * 1024
# Allowed growth from the warmed-up baseline to the end (a leak grows with SCALE; these do not).
MAX_RSS_GROWTH_MB = 12
MAX_FD_GROWTH = 4
MAX_THREAD_GROWTH = 3


def figures(pid: int) -> tuple[float, int, int]:
    p = psutil.Process(pid)
    return p.memory_info().rss / MB, p.num_fds(), p.num_threads()


def drop(inbox: Path, name: str, data: bytes) -> None:
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, inbox / name)


def bad_file(rng: random.Random) -> bytes:
    good = tone_wav(0.2)
    return rng.choice([
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))),   # random bytes
        good[: rng.randrange(1, 60)],                                        # truncated header
        good[:44] + b"\x00" * 5,                                             # data size lies
        b"",                                                                 # empty
    ])


def ask(probe: Probe, root: str, command: str, body: dict | bytes, timeout: float = 20) -> dict:
    if isinstance(body, bytes):   # raw payloads cannot carry a transaction: take the next answer
        n = len(probe.on(f"{root}/response/{command}"))
        probe.publish(f"{root}/request/{command}", body)
        return probe.wait_for(f"{root}/response/{command}", count=n + 1, timeout=timeout)[-1].json
    return probe.request(root, command, body, timeout=timeout)


def wait_answering(probe: Probe, root: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe.request(root, "ping", timeout=2)["status"] == "ok":
                return
        except (AssertionError, RuntimeError, ValueError):
            pass
        assert time.monotonic() < deadline, "the agent did not answer again after a broker restart"
        time.sleep(0.3)


@pytest.mark.soak
def test_soak_requests_and_files_with_faults_resources_stay_flat(tmp_path):
    rng = random.Random(int(os.environ.get("SOAK_SEED", "7")))
    broker = Broker(tmp_path / "broker", persistent=True).start()
    probe = Probe(broker.host, broker.port, protocol="3.1.1", client_id="soak-probe", persistent=True,
                  subscribe=("voice/+/event/transcript", "voice/+/availability", "voice/+/response/#"))
    agent = AgentProcess(tmp_path / "agent", broker.port, {"log_level": "INFO", "inbox": {"settle_ms": 200}})
    wav_b64 = base64.b64encode(tone_wav(0.3)).decode()
    text = "The soak test keeps the agent busy. " * 8
    cheap = [("ping", {}), ("state", {}), ("stats", {}), ("config/get", {}), ("summarize", {"text": text}),
             ("transcribe", {"audio_b64": wav_b64}), ("ping", b"{not json"), ("make/coffee", {}),
             ("ping", {"extra": 1})]
    try:
        agent.start(probe)
        for command, body in cheap * 3:                      # warm every path before the baseline
            ask(probe, agent.root, command, body)
        drop(agent.inbox, "warm.wav", tone_wav(0.2))
        probe.wait_for(f"{agent.root}/event/transcript", what="warm-up transcript")
        time.sleep(1)
        base = figures(agent.proc.pid)
        samples = [base]
        good, bad, restarts, busy = [], [], 0, 0
        file_every = max(1, REQUESTS // FILES)
        t0 = time.monotonic()
        for i in range(REQUESTS):
            if i % file_every == 0 and len(good) + len(bad) < FILES:
                name = f"s{len(good) + len(bad):04d}.wav"
                if rng.random() < 0.2:
                    drop(agent.inbox, name, bad_file(rng))
                    bad.append(name)
                else:
                    drop(agent.inbox, name, tone_wav(0.1 + rng.random() / 5))
                    good.append(name)
            if i and i % 100 == 0:
                samples.append(figures(agent.proc.pid))
                if rng.random() < 0.8:                       # a broker restart now and then
                    broker.stop()
                    time.sleep(rng.uniform(0.2, 1.5))
                    broker.start()
                    restarts += 1
                    wait_answering(probe, agent.root)
            command, body = rng.choice(cheap)
            answer = ask(probe, agent.root, command, body)
            if command in ("transcribe", "summarize") and answer["status"] == "error":
                assert answer["error"]["code"] == "busy", answer   # an inbox file may hold the slot
                busy += 1
            elif command in ("make/coffee",) or isinstance(body, bytes) or "extra" in body:
                assert answer["status"] == "error", answer
            else:
                assert answer["status"] == "ok", (command, answer)
        while len(good) + len(bad) < FILES:
            name = f"s{len(good) + len(bad):04d}.wav"
            drop(agent.inbox, name, tone_wav(0.2))
            good.append(name)
        deadline = time.monotonic() + 60 + FILES / 5
        while True:
            done = {p.name for p in (agent.inbox / "processed").glob("s*.wav")}
            failed = {p.name for p in (agent.inbox / "failed").glob("s*.wav")}
            if len(done) + len(failed) >= FILES:
                break
            assert time.monotonic() < deadline, f"{len(done) + len(failed)}/{FILES} files finished"
            time.sleep(0.2)
        assert done == set(good) and failed == set(bad)
        probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["source"]["kind"] == "inbox",
                       count=len(good) + 1, timeout=60, what="transcripts")
        time.sleep(2)
        transcripts = [m.json["source"]["name"] for m in probe.on(f"{agent.root}/event/transcript")
                       if m.json["source"]["kind"] == "inbox"]
        assert set(good) <= set(transcripts)
        end = figures(agent.proc.pid)
        samples.append(end)
        elapsed = time.monotonic() - t0
        rss = [s[0] for s in samples]
        fds = [s[1] for s in samples]
        threads = [s[2] for s in samples]
        print(f"\nsoak x{SCALE}: {REQUESTS} requests, {FILES} files ({len(bad)} bad), {restarts} broker restarts, "
              f"{busy} busy answers, in {elapsed:.0f}s; transcripts {len(transcripts)} for {len(good) + 1} good files "
              f"({len(transcripts) - len(set(transcripts))} duplicates)\n"
              f"  RSS MB   start {base[0]:.1f} end {end[0]:.1f} (min {min(rss):.1f} max {max(rss):.1f})\n"
              f"  fds      start {base[1]} end {end[1]} (min {min(fds)} max {max(fds)})\n"
              f"  threads  start {base[2]} end {end[2]} (min {min(threads)} max {max(threads)})\n"
              f"  RSS every {100 * max(1, len(rss) // 12)} requests: "
              + " ".join(f"{r:.1f}" for r in rss[::max(1, len(rss) // 12)]))
        assert end[0] - base[0] < MAX_RSS_GROWTH_MB, rss
        assert end[1] - base[1] <= MAX_FD_GROWTH, fds
        assert end[2] - base[2] <= MAX_THREAD_GROWTH, threads
        assert agent.alive()
        assert "Traceback" not in agent.log(), agent.log()[-3000:]
        stats = probe.request(agent.root, "stats")["data"]
        print("  agent stats: " + json.dumps({k: stats[k] for k in ("jobs", "requests", "outbox")}))
    finally:
        agent.stop()
        probe.close()
        broker.stop()
