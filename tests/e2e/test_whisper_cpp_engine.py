"""The whisper_cpp engine against the real whisper.cpp program and model, and against stand-in
programs for the joined-batch contract, warm-up, timeouts and failures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from agent.engines import make_transcriber
from agent.audio.clip import Audio
from agent.engines.base import Transcript
from agent.errors import EngineError
from agent.settings import TranscriberSettings, WhisperCppSettings
from tests.support.models import (
    REPO_ROOT,
    SENTENCE,
    needs_whisper_cpp,
    speech,  # noqa: F401  (fixture)
    speech_wav,
    whisper_cpp_binary,
    whisper_cpp_model,
)
from tests.support.whisper_cpp_standin import pcm_digest, whisper_cpp_standin
from tests.support.engine_audio import read_audio, word_recall, words


def whisper_cpp_settings(**overrides: object) -> TranscriberSettings:
    cpp = WhisperCppSettings(binary=str(whisper_cpp_binary()), model=str(whisper_cpp_model()), threads=2)
    cpp = replace(cpp, **{k: v for k, v in overrides.items() if k in WhisperCppSettings.__dataclass_fields__})
    top = {"language": "en", "timeout_s": 120.0}
    top.update({k: v for k, v in overrides.items() if k in top})
    return TranscriberSettings(engine="whisper_cpp", whisper_cpp=cpp, **top)


@pytest.fixture(scope="module")
def whisper_cpp() -> object:
    """The real engine with `batch: concat`, greedy, auto window (the opt-in speed settings; tests of
    the `files` mode ask for it themselves)."""
    engine = make_transcriber(whisper_cpp_settings(batch="concat", beam_size=1, audio_ctx=None))
    engine.load()
    yield engine
    engine.close()


@pytest.mark.slow
@needs_whisper_cpp
def test_whisper_cpp_stdin_and_path(whisper_cpp: object, speech: dict[str, Path]) -> None:
    via_stdin = whisper_cpp.transcribe(read_audio(speech["sentence"], keep_path=False))
    via_path = whisper_cpp.transcribe(read_audio(speech["sentence"]))
    for result in (via_stdin, via_path):
        assert isinstance(result, Transcript) and result.engine == "whisper_cpp"
        assert word_recall(SENTENCE, result.text) >= 0.6, result.text
    assert whisper_cpp._stdin_ok is True  # stdin really was used, not the tmpfs fallback


@pytest.fixture(scope="module")
def whisper_cpp_files() -> object:
    """`batch: files` (one -f per input): the mode where a path reaches the program per input."""
    engine = make_transcriber(whisper_cpp_settings(batch="files"))
    yield engine
    engine.close()


@pytest.mark.slow
@needs_whisper_cpp
def test_whisper_cpp_batch_isolates_a_corrupt_file(whisper_cpp_files: object, speech: dict[str, Path]) -> None:
    before = set(Path("/dev/shm").glob("whisper-cpp-*"))   # another run killed earlier may have left some
    batch = [
        read_audio(speech["sentence"], keep_path=False),  # goes through a tmpfs file
        Audio(samples=np.zeros(10, dtype=np.int16), path=speech["garbage"]),
        read_audio(speech["music"]),  # passed by path
    ]
    results = whisper_cpp_files.transcribe_batch(batch)
    assert len(results) == 3
    assert isinstance(results[0], Transcript) and word_recall(SENTENCE, results[0].text) >= 0.6
    assert isinstance(results[1], EngineError) and results[1].code == "engine_error"
    assert "garbage.wav" in results[1].message
    assert isinstance(results[2], Transcript) and word_recall("play some music", results[2].text) >= 0.6
    assert not set(Path("/dev/shm").glob("whisper-cpp-*")) - before, "tmpfs files left behind"


@pytest.mark.slow
@needs_whisper_cpp
def test_whisper_cpp_batch_falls_back_when_the_run_fails(whisper_cpp_files: object, speech: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A missing input makes the whole run exit non-zero; every input still gets its own answer."""
    batch = [read_audio(speech["music"]), Audio(np.zeros(10, dtype=np.int16), path=tmp_path / "gone.wav")]
    results = whisper_cpp_files.transcribe_batch(batch)
    assert isinstance(results[0], Transcript) and word_recall("play some music", results[0].text) >= 0.6
    assert isinstance(results[1], EngineError) and results[1].code == "engine_error"


# Different sentences of different lengths, each with words no other one has; None = 0.5 s silence.
JOINED = (
    ("open the garage door", ("garage",)),
    (None, ()),
    ("please remind me to call the plumber about the leaking kitchen tap", ("plumber",)),
    ("what is the weather like tomorrow morning", ("weather",)),
    ("every morning the old lighthouse keeper walks along the rocky shore counting the fishing boats "
     "that return from the sea before the storm arrives in the evening", ("lighthouse", "shore", "boats")),
    ("set a timer for twenty minutes", ("timer",)),
)


def count_runs(engine: object, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the argv of every program run the engine makes (the runs themselves are real)."""
    runs: list[list[str]] = []
    real = engine._run

    def recorded(args: list[str], stdin: bytes | None, timeout_s: float) -> object:
        runs.append(list(args))
        return real(args, stdin, timeout_s)

    monkeypatch.setattr(engine, "_run", recorded)
    return runs


@pytest.mark.slow
@needs_whisper_cpp
def test_whisper_cpp_joined_batch_gives_each_input_its_own_words(
        whisper_cpp: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One real run over six inputs (1.4 to 7.8 s and a silence) joined into two packs; the split
    must be right."""
    audios = []
    for i, (text, _) in enumerate(JOINED):
        if text is None:
            audios.append(Audio(np.zeros(8000, dtype=np.int16)))
        else:
            audios.append(read_audio(speech_wav(text, tmp_path / f"joined{i}.wav"), keep_path=i % 2 == 0))
    runs = count_runs(whisper_cpp, monkeypatch)
    results = whisper_cpp.transcribe_batch(audios)
    assert len(runs) == 1 and "-ojf" in runs[0], runs  # one joined run, nothing redone
    assert runs[0].count("-f") == 2, runs                 # [garage .. weather], [lighthouse, timer]
    every = {word for _, words_ in JOINED for word in words_}
    for (text, mine), result in zip(JOINED, results):
        assert isinstance(result, Transcript), result
        got = set(words(result.text))
        if text is None:
            assert result.text == ""
        else:
            assert got & set(mine), (text, result.text)
        assert not got & (every - set(mine)), (text, result.text)


def standin_engine(tmp_path: Path, binary: Path | None = None, **overrides: object) -> object:
    exe, model = whisper_cpp_standin(tmp_path / "standin")
    cpp = WhisperCppSettings(binary=str(binary or exe), model=str(model), threads=1,
                             **{"batch": "concat", "beam_size": 1, "audio_ctx": None, **overrides})
    return make_transcriber(TranscriberSettings(engine="whisper_cpp", language="en", timeout_s=30, whisper_cpp=cpp))


def marked_clip(seconds: float, freq: float) -> Audio:
    """A tone whose first and last samples are not zero, so the stand-in's stretch is the whole clip."""
    t = np.arange(int(seconds * 16000)) / 16000
    samples = (np.sin(2 * np.pi * freq * t + 0.5) * 8000).astype(np.int16)
    samples[samples == 0] = 1
    return Audio(samples)


def standin_text(audio: Audio) -> str:
    from agent.audio.wav import encode_wav
    return pcm_digest(encode_wav(audio.samples))


def run_log(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_whisper_cpp_joined_batch_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the stand-in: the inputs joined into packs of at most PACK_MAX_S, every pack one -f
    of ONE run with JSON out, -ac sized for the longest pack; empties answered without a run; an
    input too long for a pack, and anything left over, redone together in one `files` run."""
    from agent.engines.whisper_concat import PACK_MAX_S
    from tests.support.invocation_log import recording_wrapper

    monkeypatch.setenv("WHISPER_STANDIN_DELAY_S", "0")
    exe, _ = whisper_cpp_standin(tmp_path / "standin")
    wrapper, log = recording_wrapper(tmp_path, exe)
    engine = standin_engine(tmp_path, wrapper)
    engine.load()
    # packs: [1.5 s, 3 s, 0.4 s] (7.4 s with gaps and tail), [10.5 s, 5.5 s] (17.5 s); 26 s and
    # 4 s fit no pack with a neighbour
    audios = [marked_clip(1.5, 300), Audio(np.zeros(0, dtype=np.int16)), marked_clip(3.0, 400),
              marked_clip(0.4, 450), marked_clip(10.5, 500), marked_clip(5.5, 550), marked_clip(26.0, 350),
              marked_clip(4.0, 600)]
    before = len(run_log(log))
    results = engine.transcribe_batch(audios)
    runs = run_log(log)[before:]
    assert [r.text for r in results] == [standin_text(a) if a.duration_s else "" for a in audios]
    joined = [r for r in runs if "-ojf" in r]
    rest = [r for r in runs if "-ojf" not in r]
    assert len(joined) == 1 and len(rest) == 1, runs
    packs = [joined[0][k + 1] for k, arg in enumerate(joined[0]) if arg == "-f"]
    assert len(packs) == 2 and all(Path(p).parent.parent == Path("/dev/shm") for p in packs)
    assert not Path(packs[0]).parent.exists()   # tmpfs, and cleaned up
    assert joined[0][joined[0].index("-mc") + 1] == "0"
    assert PACK_MAX_S == 18.0 and joined[0][joined[0].index("-ac") + 1] == "1024"   # 17.5 s + 2 s margin
    assert rest[0].count("-f") == 2 and "-otxt" in rest[0]   # 26 s and 4 s in one files run
    assert rest[0][rest[0].index("-ac") + 1] == "1408"       # 26 s + 2 s margin, rounded up to 64
    assert "-nt" not in joined[0] + rest[0]
    assert all(run[run.index("-bs") + 1] == "1" for run in runs)   # greedy, as configured


def test_whisper_cpp_joined_run_failure_falls_back_one_by_one(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_STANDIN_DELAY_S", "0")
    exe, _ = whisper_cpp_standin(tmp_path / "standin")
    failing = tmp_path / "fails-on-json"
    failing.write_text(f"""#!{sys.executable}
import os, sys
if "-ojf" in sys.argv:
    print("error: simulated crash of the joined run", file=sys.stderr)
    sys.exit(3)
os.execv({str(exe)!r}, [{str(exe)!r}, *sys.argv[1:]])
""")
    failing.chmod(0o755)
    engine = standin_engine(tmp_path, failing)
    audios = [marked_clip(1.0, 300), marked_clip(2.0, 400), marked_clip(1.5, 500)]
    assert [r.text for r in engine.transcribe_batch(audios)] == [standin_text(a) for a in audios]

    gone = standin_engine(tmp_path, tmp_path / "no-such-program")
    with pytest.raises(EngineError) as info:
        gone.transcribe_batch(audios)
    assert info.value.code == "engine_unavailable"


def test_whisper_cpp_warm_up_needs_no_numpy(tmp_path: Path) -> None:
    """An idle agent must not carry numpy (15 MB): importing the engine and load() stay without it."""
    exe, model = whisper_cpp_standin(tmp_path / "standin")
    code = f"""
import sys
import agent.engines.base
if "numpy" in sys.modules:
    sys.exit("agent.engines.base imports numpy")
from agent.engines.whisper_cpp import WhisperCppTranscriber
from agent.settings import TranscriberSettings, WhisperCppSettings
engine = WhisperCppTranscriber(TranscriberSettings(engine="whisper_cpp", whisper_cpp=WhisperCppSettings(
    binary={str(exe)!r}, model={str(model)!r})))
engine.load()
print("numpy" in sys.modules, engine._stdin_ok)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "WHISPER_STANDIN_DELAY_S": "0"})
    if "agent.engines.base imports numpy" in out.stderr:
        pytest.skip("agent.engines.base itself still imports numpy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]  # warmed up through stdin, and numpy never loaded


def _processes_using(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in (proc.info.get("cmdline") or [])):
            found.append(proc)
    return found


@pytest.mark.slow
@needs_whisper_cpp
def test_whisper_cpp_timeout_kills_the_process(speech: dict[str, Path], tmp_path: Path) -> None:
    # A model path unique to this test, so only our own process can match the check below.
    model = tmp_path / "timeout-model.bin"
    model.symlink_to(whisper_cpp_model())
    engine = make_transcriber(whisper_cpp_settings(model=str(model), timeout_s=0.3))
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        engine.transcribe(read_audio(speech["sentence"], keep_path=False))
    assert info.value.code == "engine_timeout"
    assert time.monotonic() - started < 5
    assert _processes_using(str(model)) == []
    engine.close()


@needs_whisper_cpp
def test_whisper_cpp_missing_model_or_binary_is_unavailable(tmp_path: Path, speech: dict[str, Path]) -> None:
    engine = make_transcriber(whisper_cpp_settings(model=str(tmp_path / "missing.bin")))
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "engine_unavailable" and "missing.bin" in info.value.message
    with pytest.raises(EngineError) as info:
        engine.transcribe(read_audio(speech["command"]))
    assert info.value.code == "engine_unavailable"

    engine = make_transcriber(whisper_cpp_settings(binary=str(tmp_path / "no-such-whisper")))
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "engine_unavailable" and "no-such-whisper" in info.value.message

    engine = make_transcriber(whisper_cpp_settings(model=None))
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "engine_unavailable"
