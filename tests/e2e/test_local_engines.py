"""faster-whisper and PocketSphinx against their real models on espeak-ng speech."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engines import make_transcriber
from agent.settings import FasterWhisperSettings, PocketsphinxSettings, TranscriberSettings
from tests.support.models import REPO_ROOT, SENTENCE, faster_whisper_model_dir, speech  # noqa: F401  (fixture)
from tests.support.engine_audio import read_audio, word_recall, words


COMMANDS = ("turn on the light", "turn off the light", "play some music", "stop the music", "what time is it")


@pytest.mark.slow
def test_faster_whisper_transcribes_the_sentence(speech: dict[str, Path]) -> None:
    pytest.importorskip("faster_whisper")
    try:
        model_dir = faster_whisper_model_dir(REPO_ROOT / ".cache/models/faster-whisper-base")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    settings = TranscriberSettings(engine="faster_whisper", language="en", timeout_s=120,
                                   faster_whisper=FasterWhisperSettings(model=str(model_dir), threads=2))
    engine = make_transcriber(settings)
    engine.load()
    try:
        result = engine.transcribe(read_audio(speech["sentence"], keep_path=False))
        assert result.engine == "faster_whisper" and result.language == "en"
        assert word_recall(SENTENCE, result.text) >= 0.6, result.text
    finally:
        engine.close()


@pytest.fixture(scope="module")
def grammar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jsgf") / "commands.gram"
    path.write_text("#JSGF V1.0;\ngrammar commands;\npublic <command> = " + " | ".join(COMMANDS) + ";\n")
    return path


@pytest.mark.slow
def test_pocketsphinx_grammar_recognises_commands_exactly(grammar: Path, speech: dict[str, Path]) -> None:
    pytest.importorskip("pocketsphinx")
    engine = make_transcriber(TranscriberSettings(
        engine="pocketsphinx", pocketsphinx=PocketsphinxSettings(grammar=str(grammar))))
    engine.load()
    results = engine.transcribe_batch([read_audio(speech["command"]), read_audio(speech["music"])])
    assert [r.text for r in results] == ["turn off the light", "play some music"]
    engine.close()


@pytest.mark.slow
def test_pocketsphinx_dictation_returns_text(speech: dict[str, Path]) -> None:
    pytest.importorskip("pocketsphinx")
    engine = make_transcriber(TranscriberSettings(engine="pocketsphinx"))
    engine.load()
    result = engine.transcribe(read_audio(speech["sentence"]))
    assert result.engine == "pocketsphinx" and len(words(result.text)) >= 2, result.text
    engine.close()
