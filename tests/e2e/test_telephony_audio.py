"""Inputs that devices meet (issue 27, point 4): G.711 mu-law and A-law WAV (format tags 7 and 6, at
8 kHz: telephony and voicemail) are decoded, not refused, and a FLAC still transcribes after the
soundfile path was made to decode block by block (issue 22).

Real people (tests/support/real_speech.py) converted by sox, an independent program, dropped into
the inbox of `voice-agent run` (a subprocess, real Mosquitto) with the real whisper.cpp and its
base model: the transcripts hold the words that were said. Skips, saying why, where whisper.cpp,
its model, sox or the recordings are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import real_speech
from tests.support.models import real_whisper_cpp
from tests.support.probe import Probe
from tests.support.real_speech import word_recall
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

# recording -> (file in the inbox, sox options): both G.711 laws at the telephone's 8 kHz, and a FLAC
CASES = {
    "goforward.wav": ("goforward-mulaw.wav", ["-r", "8000", "-e", "u-law"]),
    "sense_and_sensibility_01_austen_64kb-0880.wav": ("ill-disposed-alaw.wav", ["-r", "8000", "-e", "a-law"]),
    "Front_Center.wav": ("front-center.flac", []),
}


def test_g711_and_flac_recordings_of_people_are_transcribed(make_agent, probe: Probe, tmp_path: Path) -> None:
    binary, model = real_whisper_cpp()
    if shutil.which("sox") is None:
        pytest.skip("sox is needed to write G.711 and FLAC files (scripts/setup-system --test)")
    found = {r.name: r for r in real_speech.recordings(("command", "sentence"))}
    if not set(CASES) <= set(found):
        pytest.skip(f"real recordings missing: {real_speech.unavailable() or sorted(set(CASES) - set(found))}")
    agent = make_agent({"transcriber": {"engine": "whisper_cpp", "language": "en", "timeout_s": 300,
                                        "whisper_cpp": {"binary": str(binary), "model": str(model), "threads": 2}},
                        "summarizer": {"engine": "none"}})
    agent.start(probe, timeout=60)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=180,
                   what="whisper.cpp warmed up")
    agent.inbox.mkdir(parents=True, exist_ok=True)
    for source, (name, options) in CASES.items():
        part = agent.inbox / f".{name}.part{Path(name).suffix}"
        subprocess.run(["sox", str(found[source].path), *options, str(part)], check=True, capture_output=True)
        os.rename(part, agent.inbox / name)
    processed, failed = agent.inbox / "processed", agent.inbox / "failed"
    for source, (name, _) in CASES.items():
        done, refused = processed / f"{name}.json", failed / f"{name}.error.json"
        wait_until(lambda: done.exists() or refused.exists(), 240, f"{name} processed or failed")
        assert done.exists(), json.loads(refused.read_text())
        transcript = json.loads(done.read_text())["transcript"]
        said = found[source].text
        print(f"\n{name}: {transcript!r} (said: {said!r})")
        assert word_recall(said, transcript) >= 0.8, (name, transcript, said)
    assert not failed.exists() or not list(failed.iterdir()), list(failed.iterdir())
