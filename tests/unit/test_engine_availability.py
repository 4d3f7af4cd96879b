"""Engines that cannot work say so (engine_unavailable) without running anything, and their
bench metadata is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from agent.engines import make_transcriber
from agent.audio.clip import Audio
from agent.errors import EngineError
from agent.settings import (
    TEST_ENGINES_ENV,
    FasterWhisperSettings,
    PocketsphinxSettings,
    TranscriberSettings,
)


def test_faster_whisper_missing_package_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # makes the import raise ImportError
    engine = make_transcriber(TranscriberSettings(engine="faster_whisper"))
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "engine_unavailable" and "voice-agent[faster-whisper]" in info.value.message


def test_faster_whisper_missing_model_folder_is_unavailable(tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper")
    engine = make_transcriber(TranscriberSettings(
        engine="faster_whisper", faster_whisper=FasterWhisperSettings(model=str(tmp_path / "nothing"))))
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "engine_unavailable"


def test_pocketsphinx_rejects_other_languages_and_missing_grammar(tmp_path: Path) -> None:
    pytest.importorskip("pocketsphinx")
    for settings in (
        TranscriberSettings(engine="pocketsphinx", language="de"),
        TranscriberSettings(engine="pocketsphinx",
                            pocketsphinx=PocketsphinxSettings(grammar=str(tmp_path / "none.gram"))),
    ):
        with pytest.raises(EngineError) as info:
            make_transcriber(settings).load()
        assert info.value.code == "engine_unavailable"


def test_pocketsphinx_keyword_output_is_phrases() -> None:
    from agent.engines.pocketsphinx import kws_lines, spotted_phrases

    assert kws_lines(["Turn on the light", "stop /1e-5/"]) == "turn on the light /1e-20/\nstop /1e-5/\n"
    assert spotted_phrases("light light turn on the light turn on the light", ["light", "turn on the light"]) \
        == "light turn on the light"


def test_openai_without_key_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine = make_transcriber(TranscriberSettings(engine="openai"))
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "engine_unavailable"


def test_whisper_server_without_url_or_command_is_unavailable() -> None:
    with pytest.raises(EngineError) as info:
        make_transcriber(TranscriberSettings(engine="whisper_server")).load()
    assert info.value.code == "engine_unavailable"


def test_bench_metadata_describes_audio_instantly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_ENGINES_ENV, raising=False)
    with pytest.raises(KeyError):   # a test engine: not built without the test switch
        make_transcriber(TranscriberSettings(engine="bench_metadata"))
    monkeypatch.setenv(TEST_ENGINES_ENV, "1")
    engine = make_transcriber(TranscriberSettings(engine="bench_metadata"))
    engine.load()
    full_scale = Audio(np.full(16000 + 3680, 32767, dtype=np.int16))
    assert engine.transcribe(full_scale).text == "audio 1.23 s rms -0.0 dBFS"
    quiet = Audio((np.ones(8000) * 3277).astype(np.int16))
    assert engine.transcribe_batch([quiet])[0].text == "audio 0.50 s rms -20.0 dBFS"
    assert engine.transcribe(Audio(np.zeros(0, dtype=np.int16))).text == "audio 0.00 s rms -inf dBFS"
