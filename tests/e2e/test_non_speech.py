"""No words from sounds that are not speech, through the agent, with each engine that can promise it.

Real recordings of a scream, laughter, music and noise (tests/support/non_speech.py) go into the
inbox of a running agent; every one must end `done` with a transcript that has no word in it (as
the word error rate counts words: tags like "[Music]" and spelled sounds like "AHHH" are none).
A real sentence goes in beside them and must keep its words, so an engine that went deaf would fail.

PocketSphinx is not here: its dictation decoder turns these sounds into dictionary words ("yeah",
"and it had helped keep") and offers no confidence that separates them (docs/performance.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import non_speech, real_speech
from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.models import faster_whisper_model_dir, whisper_cpp_binary, whisper_cpp_missing, whisper_cpp_model
from tests.support.probe import Probe

SENTENCE = "goforward.wav"


def engine_config(engine: str, tmp_path: Path) -> dict:
    if engine == "moonshine":
        pytest.importorskip("moonshine_voice", reason="pip install 'voice-agent[moonshine]'")
        return {"engine": "moonshine"}
    if engine == "faster_whisper":
        pytest.importorskip("faster_whisper", reason="pip install 'voice-agent[faster-whisper]'")
        try:
            model = faster_whisper_model_dir(real_speech.REPO_ROOT / ".cache/models/faster-whisper-base")
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        return {"engine": "faster_whisper", "faster_whisper": {"model": str(model), "threads": 2}}
    missing = whisper_cpp_missing()
    if missing:
        pytest.skip(missing)
    return {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(whisper_cpp_binary()),
                                                      "model": str(whisper_cpp_model()), "threads": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["moonshine", "faster_whisper", "whisper_cpp"])
def test_no_words_from_non_speech(engine: str, broker: Broker, probe: Probe, tmp_path: Path) -> None:
    pytest.importorskip("soundfile", reason="the laughter, trombone and horn are MP3 (pip install 'voice-agent[formats]')")
    sounds = non_speech.sounds()
    if len(sounds) < 5:
        pytest.skip(f"only {len(sounds)} non-speech recordings: {non_speech.unavailable()}")
    sentence = next((r for r in real_speech.require(minimum=1) if r.name == SENTENCE), None)
    if sentence is None:
        pytest.skip(f"{SENTENCE} missing: {real_speech.unavailable()}")
    agent = AgentProcess(tmp_path, broker.port, {"transcriber": {**engine_config(engine, tmp_path), "timeout_s": 120}})
    agent.start(probe)
    try:
        agent.inbox.mkdir(parents=True, exist_ok=True)
        for path in [s.path for s in sounds] + [sentence.path]:
            part = agent.inbox / f".{path.name}.part"
            shutil.copyfile(path, part)
            part.rename(agent.inbox / path.name)
        messages = probe.wait_for(f"{agent.root}/event/transcript", count=len(sounds) + 1, timeout=600,
                                  what=f"{len(sounds) + 1} transcripts")
    finally:
        agent.stop()
    said = {m.json["source"]["name"]: m.json["text"] for m in messages}
    words = {s.name: said[s.name] for s in sounds if real_speech.normalize(said[s.name])}
    assert words == {}, f"{engine} gave words for sounds that are not speech: {words}"
    assert real_speech.normalize(said[SENTENCE]) == real_speech.normalize(sentence.text), said[SENTENCE]
