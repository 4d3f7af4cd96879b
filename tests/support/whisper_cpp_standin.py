"""A STAND-IN for the whisper.cpp command-line program, for tests only. It does not transcribe.

Why: the fleet test needs a transcriber that takes a fixed time per job (0.2 s) on 30 jobs, and
the real whisper.cpp base model takes seconds per job on 2 cores shared by other tests. This
program honours the part of the whisper.cpp CLI contract the agent's `whisper_cpp` engine uses,
so the agent runs its real engine code (process per run, `-f -` on stdin, `-otxt -of` batches,
`-oj -of` JSON for joined batches):

    standin -m MODEL -f INPUT [-f INPUT ...] -l LANG -t N [-bs N] [-np] [-nt] [-ac N] [-mc N]
            [-otxt | -oj | -ojf] [-of OUT ...]

INPUT is a WAV path or `-` (WAV on stdin). For each input it sleeps WHISPER_STANDIN_DELAY_S
(default 0.2) and prints one line `standin <digest> <seconds>s`, where digest is the first 16 hex
digits of the SHA-256 of the input's PCM frames, so a test can tell which audio produced which
transcript. Like the real program it prefixes the line with `[start --> end]` unless `-nt` is
given. With `-otxt` the line goes to `<OUT>.txt` instead of standard output.

With `-oj` / `-ojf` it writes `<OUT>.json` shaped like whisper.cpp's: `{"transcription": [...]}`
with one segment per stretch of sound, `{"offsets": {"from": ms, "to": ms}, "timestamps": {...},
"text": " standin <digest> <seconds>s", "tokens": [...]}` (one token per word, at the segment's
offsets). A stretch is what lies between runs of at least
STRETCH_GAP_S of exact zeros (the engine joins batch inputs with 1 s of them), and its digest is
that of its own frames: an input whose first and last samples are not zero, joined with others,
comes back as a segment whose text is exactly `pcm_digest(<that input's WAV>)`. Unlike the real
program the offsets are exact. `-bs`, `-ac` and `-mc` are accepted and have no effect.

`whisper_cpp_standin(tmp)` writes an executable wrapper (and a dummy model file) for the agent's
config; `pcm_digest(wav_bytes)` computes the same digest in the test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
import wave
from array import array
from pathlib import Path

RATE = 16000
STRETCH_GAP_S = 0.5
_VALUE_FLAGS = ("-f", "-of", "-m", "-l", "-t", "-bs", "-ac", "-mc")


def _line(frames: bytes, rate: int = RATE) -> str:
    return f"standin {hashlib.sha256(frames).hexdigest()[:16]} {len(frames) / 2 / rate:.2f}s"


def pcm_digest(wav_bytes: bytes) -> str:
    with wave.open(io.BytesIO(wav_bytes), "rb") as w:
        return _line(w.readframes(w.getnframes()), w.getframerate())


def whisper_cpp_standin(folder: Path) -> tuple[Path, Path]:
    """(executable, dummy model) in `folder`: the `binary` and `model` of transcriber.whisper_cpp."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "whisper-cpp-standin"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    exe.chmod(0o755)
    model = folder / "ggml-standin.bin"
    model.write_bytes(b"not a model: used by tests/support/whisper_cpp_standin.py\n")
    return exe, model


def stretches(frames: bytes, gap: int) -> list[tuple[int, int]]:
    """(first, end) sample indexes of the stretches of sound between runs of >= gap zeros."""
    samples = array("h")
    samples.frombytes(frames[: len(frames) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    found: list[tuple[int, int]] = []
    start: int | None = None
    last = zeros = 0
    for i, value in enumerate(samples):
        if value:
            if start is None:
                start = i
            last, zeros = i, 0
        elif start is not None:
            zeros += 1
            if zeros >= gap:
                found.append((start, last + 1))
                start = None
    if start is not None:
        found.append((start, last + 1))
    return found


def _clock(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _json_of(frames: bytes, rate: int) -> dict:
    segments = []
    for first, end in stretches(frames, int(STRETCH_GAP_S * rate)):
        t0, t1 = first / rate, end / rate
        offsets = {"from": round(t0 * 1000), "to": round(t1 * 1000)}
        text = " " + _line(frames[2 * first:2 * end], rate)
        segments.append({"timestamps": {"from": _clock(t0).replace(".", ","), "to": _clock(t1).replace(".", ",")},
                         "offsets": offsets, "text": text,
                         "tokens": [{"text": " " + word, "offsets": offsets} for word in text.split()]})
    return {"systeminfo": "whisper.cpp STAND-IN", "transcription": segments}


def main(argv: list[str]) -> int:
    values: dict[str, list[str]] = {flag: [] for flag in _VALUE_FLAGS}
    switches: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in values and i + 1 < len(argv):
            values[arg].append(argv[i + 1])
            i += 2
            continue
        switches.add(arg)
        i += 1
    inputs, outputs = values["-f"], values["-of"]
    model = values["-m"][-1] if values["-m"] else None
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
            with wave.open(io.BytesIO(data), "rb") as w:
                rate, frames = w.getframerate(), w.readframes(w.getnframes())
        except (OSError, wave.Error, EOFError) as exc:
            print(f"error: failed to read audio file '{name}': {exc}", file=sys.stderr)
            continue
        time.sleep(delay)
        line = _line(frames, rate)
        shown = line if "-nt" in switches else f"[00:00:00.000 --> {_clock(len(frames) / 2 / rate)}]   {line}"
        out = outputs[n] if n < len(outputs) else None
        if out and switches & {"-oj", "-ojf"}:
            Path(out + ".json").write_text(json.dumps(_json_of(frames, rate), indent=2))
        if out and "-otxt" in switches:
            Path(out + ".txt").write_text(line + "\n")
        else:
            print(shown, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
