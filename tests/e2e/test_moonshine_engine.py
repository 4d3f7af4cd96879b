"""Moonshine Tiny (`transcriber.engine: moonshine`) through the agent, on real recordings.

The engine's model comes from the moonshine-voice 0.1.0 wheel; nothing may be downloaded at run
time. The second test proves that with the network really gone: the agent runs in a network
namespace of its own (`unshare -n`: no interface but its own loopback, brought up because paho
needs it for an internal socket pair), so any download attempt fails; with no broker there it
still works through its inbox, and the record it writes in `processed/` carries the words.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import real_speech
from tests.support.agent import AgentProcess, voice_agent_cmd
from tests.support.broker import Broker
from tests.support.probe import Probe
from tests.support.wait import wait_until

#: Run inside the new namespace: bring its loopback up, then become the agent (argv, no shell).
LOOPBACK_THEN_EXEC = ("import os, subprocess, sys; subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True); "
                      "os.execvp(sys.argv[1], sys.argv[1:])")
MOONSHINE = {"transcriber": {"engine": "moonshine", "timeout_s": 120}}
#: A sentence of a LibriVox reader and a spoken command: free speech, the reason for this engine.
CHOSEN = ("sense_and_sensibility_01_austen_64kb-0870.wav", "goforward.wav")


def chosen() -> list[real_speech.Recording]:
    found = {r.name: r for r in real_speech.require(minimum=2)}
    missing = [name for name in CHOSEN if name not in found]
    if missing:
        pytest.skip(f"real recordings missing: {missing}: {real_speech.unavailable()}")
    return [found[name] for name in CHOSEN]


def drop(inbox: Path, recording: real_speech.Recording) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    part = inbox / f".{recording.name}.part"
    shutil.copyfile(recording.path, part)
    part.rename(inbox / recording.name)


@pytest.mark.slow
def test_agent_transcribes_real_speech_with_moonshine(broker: Broker, probe: Probe, tmp_path: Path) -> None:
    pytest.importorskip("moonshine_voice", reason="pip install 'voice-agent[moonshine]'")
    recordings = chosen()
    agent = AgentProcess(tmp_path, broker.port, MOONSHINE)
    agent.start(probe)
    try:
        for recording in recordings:
            drop(agent.inbox, recording)
        for recording in recordings:
            [msg] = probe.wait_for(f"{agent.root}/event/transcript",
                                 lambda m, n=recording.name: m.json["source"]["name"] == n, timeout=120,
                                 what=f"the transcript of {recording.name}")
            body = msg.json
            assert body["engine"] == "moonshine", body
            assert real_speech.normalize(body["text"]) == real_speech.normalize(recording.text), \
                (recording.text, body["text"])
    finally:
        agent.stop()
    assert "moonshine" in agent.log().lower()


@pytest.mark.slow
def test_moonshine_needs_no_network(tmp_path: Path) -> None:
    pytest.importorskip("moonshine_voice", reason="pip install 'voice-agent[moonshine]'")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare (util-linux) and ip (iproute2) are needed")
    if subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root or user namespaces)")
    recording = chosen()[1]
    # Port 1 of the namespace's own loopback: no broker, and no route anywhere else.
    agent = AgentProcess(tmp_path, 1, MOONSHINE)
    drop(agent.inbox, recording)
    log = open(agent.log_path, "ab")
    proc = subprocess.Popen(["unshare", "-n", sys.executable, "-c", LOOPBACK_THEN_EXEC,
                             *voice_agent_cmd(), "run", "--config", str(agent.config_path)],
                            stdout=log, stderr=log, env=agent.env, cwd=tmp_path)
    record_path = agent.inbox / "processed" / f"{recording.name}.json"
    try:
        wait_until(lambda: record_path.is_file() or (agent.inbox / "failed" / f"{recording.name}.json").is_file()
                   or proc.poll() is not None, timeout=120, what="the inbox file processed offline")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert record_path.is_file(), agent.log()[-3000:]
    record = json.loads(record_path.read_text())
    assert record["engines"]["transcriber"] == "moonshine", record
    assert real_speech.normalize(record["transcript"]) == real_speech.normalize(recording.text), record
