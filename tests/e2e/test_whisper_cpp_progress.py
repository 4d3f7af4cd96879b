"""whisper.cpp progress: the engine reads the program's output while it runs (issue #18).

A stand-in program plays the part of the whisper.cpp CLI the way the real one behaves with `-pp`
and `-nt`: it writes a lot to stderr before it has read its input (so a reader that fed stdin
first and read afterwards would deadlock), prints each segment's text flushed without a line
break, and "progress = N%" lines on stderr, with pauses between segments. The real program on
real speech is the slow test at the end (skipped, saying why, where the model is missing).
"""

from __future__ import annotations

import stat
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.audio.clip import Audio
from agent.engines import make_transcriber
from agent.settings import TranscriberSettings, WhisperCppSettings
from tests.support.models import real_whisper_cpp, speech_wav

SEGMENTS = (" One little segment.", " Two little segments.", " Three at last.")

STANDIN = r'''
import sys, time
args = sys.argv[1:]
assert "-pp" in args and "-nt" in args, args
sys.stderr.write("whisper_init: noise\n" * 8000)     # ~150 KB before reading stdin: more than a pipe holds
sys.stderr.flush()
data = sys.stdin.buffer.read() if args[args.index("-f") + 1] == "-" else b""
assert len(data) > 1_000_000, len(data)
segments = %r
for i, text in enumerate(segments):
    time.sleep(0.3)
    sys.stdout.write(text)
    sys.stdout.flush()
    sys.stderr.write("whisper_print_progress_callback: progress = %%3d%%%%\n" %% (45 * (i + 1)))
    sys.stderr.flush()
sys.stdout.write("\n")
'''


def standin(folder: Path) -> tuple[Path, Path]:
    exe = folder / "whisper-standin"
    exe.write_text(f"#!{sys.executable}\n" + STANDIN % (SEGMENTS,))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    model = folder / "model.bin"
    model.write_bytes(b"not a model")
    return exe, model


def test_progress_is_read_while_the_program_runs(tmp_path: Path) -> None:
    exe, model = standin(tmp_path)
    engine = make_transcriber(TranscriberSettings(
        engine="whisper_cpp", language="en", timeout_s=60,
        whisper_cpp=WhisperCppSettings(binary=str(exe), model=str(model), threads=1)))
    seen: list[tuple[float, float, str]] = []
    audio = Audio(np.zeros(16000 * 40, dtype=np.int16))   # 40 s: 1.28 MB of WAV on stdin, no path
    result = engine.transcribe(audio, progress=lambda f, text: seen.append((time.monotonic(), f, text)))
    assert result.text == "One little segment. Two little segments. Three at last."
    texts = [text for _, _, text in seen]
    assert "One little segment." in texts and "One little segment. Two little segments." in texts
    assert all(result.text.startswith(text) for text in texts), texts
    fractions = [f for _, f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and any(0 < f < 1 for f in fractions)
    # heard as it came: the first segment well before the last (0.3 s apart each in the program)
    first = next(t for t, _, text in seen if text)
    assert seen[-1][0] - first > 0.5


def test_without_progress_the_run_is_unchanged(tmp_path: Path) -> None:
    exe, model = standin(tmp_path)
    exe.write_text(f"#!{sys.executable}\nimport sys\nassert '-pp' not in sys.argv\nsys.stdin.buffer.read()\n"
                   "print(' Plain.')\n")
    engine = make_transcriber(TranscriberSettings(
        engine="whisper_cpp", language="en", timeout_s=60,
        whisper_cpp=WhisperCppSettings(binary=str(exe), model=str(model), threads=1)))
    assert engine.transcribe(Audio(np.zeros(16000, dtype=np.int16))).text == "Plain."


@pytest.mark.slow
def test_real_whisper_cpp_reports_progress_on_a_long_recording(tmp_path: Path) -> None:
    binary, model = real_whisper_cpp()   # skips, saying what is missing
    sentences = ["The quick brown fox jumps over the lazy dog near the river bank.",
                 "Please remind me to call the plumber about the leaking kitchen tap.",
                 "Every morning the old lighthouse keeper walks along the rocky shore.",
                 "The library opens at nine and closes at six on weekdays."]
    parts = []
    for i, sentence in enumerate(sentences * 2):
        with wave.open(str(speech_wav(sentence, tmp_path / f"s{i}.wav", pad_s=1.0))) as w:
            parts.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))
    audio = Audio(np.concatenate(parts).astype(np.int16))
    assert audio.duration_s > 32   # two of whisper's 30 s windows
    engine = make_transcriber(TranscriberSettings(
        engine="whisper_cpp", language="en", timeout_s=1200,
        whisper_cpp=WhisperCppSettings(binary=str(binary), model=str(model), threads=2, timeout_s=1200)))
    seen: list[tuple[float, str]] = []
    result = engine.transcribe(audio, progress=lambda f, text: seen.append((f, text)))
    assert len(seen) >= 2, seen
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and any(0 < f < 1 for f, _ in seen), seen
    assert all(result.text.startswith(text) for _, text in seen), (seen, result.text)
    assert any(text and text != result.text for _, text in seen), "no partial text before the end"
