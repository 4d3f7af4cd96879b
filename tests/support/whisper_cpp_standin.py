"""A STAND-IN for the whisper.cpp command-line program, for tests only. It does not transcribe.

Why: the fleet test needs a transcriber that takes a fixed time per job (0.2 s) on 30 jobs, and
the real whisper.cpp base model takes seconds per job on 2 cores shared by other tests. This
program honours the part of the whisper.cpp CLI contract the agent's `whisper_cpp` engine uses,
so the agent runs its real engine code (process per run, `-f -` on stdin, `-otxt -of` batches):

    standin -m MODEL -f INPUT [-f INPUT ...] -l LANG -t N -nt -np [-otxt -of OUT ...]

INPUT is a WAV path or `-` (WAV on stdin). For each input it sleeps WHISPER_STANDIN_DELAY_S
(default 0.2) and prints one line `standin <digest> <seconds>s`, where digest is the first 16 hex
digits of the SHA-256 of the input's PCM frames, so a test can tell which audio produced which
transcript. With `-otxt` the line goes to `<OUT>.txt` instead of standard output.

`whisper_cpp_standin(tmp)` writes an executable wrapper (and a dummy model file) for the agent's
config; `pcm_digest(wav_bytes)` computes the same digest in the test.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import wave
from pathlib import Path


def pcm_digest(wav_bytes: bytes) -> str:
    with wave.open(io.BytesIO(wav_bytes), "rb") as w:
        frames = w.readframes(w.getnframes())
        seconds = w.getnframes() / w.getframerate()
    return f"standin {hashlib.sha256(frames).hexdigest()[:16]} {seconds:.2f}s"


def whisper_cpp_standin(folder: Path) -> tuple[Path, Path]:
    """(executable, dummy model) in `folder`: the `binary` and `model` of transcriber.whisper_cpp."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "whisper-cpp-standin"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    exe.chmod(0o755)
    model = folder / "ggml-standin.bin"
    model.write_bytes(b"not a model: used by tests/support/whisper_cpp_standin.py\n")
    return exe, model


def main(argv: list[str]) -> int:
    inputs: list[str] = []
    outputs: list[str] = []
    model = None
    otxt = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-f", "-of", "-m", "-l", "-t") and i + 1 < len(argv):
            value = argv[i + 1]
            if arg == "-f":
                inputs.append(value)
            elif arg == "-of":
                outputs.append(value)
            elif arg == "-m":
                model = value
            i += 2
            continue
        if arg == "-otxt":
            otxt = True
        i += 1
    if not model or not os.path.isfile(model):
        print(f"error: failed to open model '{model}'", file=sys.stderr)
        return 2
    if not inputs:
        print("error: no input files specified", file=sys.stderr)
        return 2
    delay = float(os.environ.get("WHISPER_STANDIN_DELAY_S", "0.2"))
    for n, name in enumerate(inputs):
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
            line = pcm_digest(data)
        except (OSError, wave.Error, EOFError) as exc:
            print(f"error: failed to read audio file '{name}': {exc}", file=sys.stderr)
            continue
        time.sleep(delay)
        if otxt and n < len(outputs):
            Path(outputs[n] + ".txt").write_text(line + "\n")
        else:
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
