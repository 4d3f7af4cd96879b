"""whisper.cpp with the model kept loaded (pywhispercpp) against the CLI the agent runs per clip.

    python -m bench kept-whisper-cpp            # the real-speech recordings, both ways, one thread

Issue #27, point 5: every CLI run loads the model and pays for the 30 s encoder window; a model
kept in the process (PyPI `pywhispercpp` 1.5.1: whisper.cpp 1.8.5, aarch64 wheels, no models)
skips the load. A kept engine may become the default only if it is faster *with equal words*, so
this prints, per recording, whether both gave the same words (as the WER counts them), beside
the word error rate and the CPU seconds of each way (CPU, not wall: the machine is shared).
Both decode as the agent's defaults do: 5 beams, the full window, English, one thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from tests.support.models import whisper_cpp_binary, whisper_cpp_model
from tests.support.real_speech import normalize, recordings, wer
from tests.support.speech_runs import to_16k_wav

THREADS = 1
BEAMS = 5


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def cli(wavs: dict[str, Path]) -> tuple[dict[str, str], float, float]:
    """One `whisper-cpp` run per file, as the agent's whisper_cpp engine runs it by default."""
    texts: dict[str, str] = {}
    cpu, t0 = _cpu(resource.RUSAGE_CHILDREN), time.monotonic()
    for name, wav in wavs.items():
        out = subprocess.run([str(whisper_cpp_binary()), "-m", str(whisper_cpp_model()), "-f", str(wav), "-l", "en",
                              "-t", str(THREADS), "-bs", str(BEAMS), "-nt", "-np"],
                             check=True, capture_output=True, timeout=600)
        lines = [line.strip() for line in out.stdout.decode("utf-8", "replace").splitlines()]
        texts[name] = " ".join(line for line in lines if line and line != "[BLANK_AUDIO]")
    return texts, _cpu(resource.RUSAGE_CHILDREN) - cpu, time.monotonic() - t0


def kept(wavs: dict[str, Path]) -> tuple[dict[str, str], float, float, float]:
    """pywhispercpp: the model loaded once (load timed apart), then one call per file."""
    try:
        from pywhispercpp.model import Model
    except ImportError:
        raise SystemExit("the kept engine needs pip install pywhispercpp==1.5.1") from None

    cpu, t0 = _cpu(resource.RUSAGE_SELF), time.monotonic()
    model = Model(str(whisper_cpp_model()), params_sampling_strategy=1, redirect_whispercpp_logs_to=None,
                  n_threads=THREADS, language="en", print_progress=False, print_realtime=False,
                  beam_search={"beam_size": BEAMS, "patience": -1.0})
    load_s = time.monotonic() - t0
    texts: dict[str, str] = {}
    cpu, t0 = _cpu(resource.RUSAGE_SELF), time.monotonic()
    for name, wav in wavs.items():
        with wave.open(str(wav)) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        texts[name] = " ".join(s.text.strip() for s in model.transcribe(samples) if s.text.strip())
    return texts, _cpu(resource.RUSAGE_SELF) - cpu, time.monotonic() - t0, load_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench kept-whisper-cpp", description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--files", type=int, help="a subset spread over the set (default: all)")
    args = ap.parse_args(argv)
    found = recordings()
    if args.files:
        found = found[::max(1, len(found) // args.files)][:args.files]
    refs = {r.name: r.text for r in found}
    with tempfile.TemporaryDirectory(prefix="kept-whisper-") as tmp:
        wavs = {r.name: to_16k_wav(r.path, Path(tmp) / r.name) for r in found}
        cli_texts, cli_cpu, cli_wall = cli(wavs)
        kept_texts, kept_cpu, kept_wall, load_s = kept(wavs)
    equal = [n for n in wavs if normalize(cli_texts[n]) == normalize(kept_texts[n])]
    row = {"files": len(wavs), "equal_words": len(equal),
           "cli": {"wer": wer([(refs[n], cli_texts[n]) for n in wavs]), "cpu_s": round(cli_cpu, 1),
                   "wall_s": round(cli_wall, 1)},
           "kept": {"wer": wer([(refs[n], kept_texts[n]) for n in wavs]), "cpu_s": round(kept_cpu, 1),
                    "wall_s": round(kept_wall, 1), "load_s": round(load_s, 2)},
           "cpu_ratio_cli_over_kept": round(cli_cpu / kept_cpu, 2) if kept_cpu else None,
           "differ": {n: [cli_texts[n], kept_texts[n]] for n in wavs if n not in equal}}
    print(json.dumps(row, indent=1))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
