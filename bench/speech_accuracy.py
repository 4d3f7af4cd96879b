"""9. Speed and accuracy on real speech: each engine and speed setting, through the agent beside the bare engine.

The recordings are real people (tests/support/real_speech.py: LibriVox sentences, card-game
commands, digits at 8 kHz, speaker names at 48 kHz), with their reference transcripts. For each
engine the bare engine runs file by file the way a user runs it by hand, with its own defaults,
on sox's 16 kHz copies; the agent gets all files at once in its inbox (paused, dropped, resumed),
so its batching sees a burst. Reported per setting: the agent's word error rate beside the bare
engine's, and throughput as bare-CLI-file-by-file seconds over agent seconds (the whisper.cpp
CLI is the yardstick for every engine: it is what the issue compares against), in CPU seconds
(agent process plus the engine runs it waited for) and in wall seconds.

The machine is shared: wall time swung several-fold between runs of the same setting while
CPU time moved far less, so CPU time is the figure to compare; each row also gives the 1-minute
load average at the end of its run. Bare faster-whisper runs in this process with OpenMP's own
defaults (as by hand); the agent sets OMP_WAIT_POLICY=PASSIVE (agent/engines/faster_whisper.py),
without which its OpenMP threads spin away about 3x the CPU on a busy machine. The bare
whisper.cpp run is measured twice, first and last, and ratios use the mean; both are printed.
A speed setting is accuracy-neutral when its word error rate is at most the bare engine's + 0.005 (`budget`); only the default rows must be.

    python -m bench --only speech            # the full grid (about 10-15 min on 2 shared cores)
    python -m bench --only speech --quick    # defaults and the old joined-batch setting only
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

from bench.common import REPO, Results
from tests.support import real_speech
from tests.support.real_speech import Recording, wer
from tests.support.speech_runs import RunResult, agent_burst, bare_whisper_cpp, fresh_dir, to_16k_wav

SECTION = "9 speech"
TOLERANCE = 0.005

# (batch, beam_size, audio_ctx); None = auto. The first row is the default.
CPP_GRID = (("files", 5, 0), ("off", 5, 0), ("files", 1, 0), ("files", 5, None), ("files", 1, None),
            ("concat", 5, 0), ("concat", 5, None), ("concat", 1, None))
CPP_QUICK = (("files", 5, 0), ("concat", 1, None))
FW_GRID = (1, 5)   # faster-whisper beam sizes; the first is the default


def _wer(recordings: list[Recording], texts: dict[str, str]) -> float:
    return wer([(r.text, texts[r.name]) for r in recordings])


def _load() -> str:
    """The 1-minute load average: how busy the 2 shared cores were (other sessions' work)."""
    return f"load {os.getloadavg()[0]:.1f}"


def _row(res: Results, engine: str, setting: str, default: bool, recordings: list[Recording], result: RunResult,
         bare_wer: float, bare_label: str, yardstick: RunResult, load: str = "") -> dict[str, Any]:
    agent_wer = _wer(recordings, result.texts)
    ratio = yardstick.seconds / result.seconds
    cpu_ratio = yardstick.cpu_s / result.cpu_s
    neutral = agent_wer <= bare_wer + TOLERANCE
    res.add(SECTION, f"{engine} {setting}{' (default)' if default else ''}: WER agent / {bare_label}; "
            f"throughput vs bare CLI (CPU time, wall time)",
            f"{agent_wer:.3f} / {bare_wer:.3f}; CPU {cpu_ratio:.2f}x ({result.cpu_s:.0f} s vs {yardstick.cpu_s:.0f} s), "
            f"wall {ratio:.2f}x ({result.seconds:.1f} s vs {yardstick.seconds:.1f} s); {load}",
            f"WER <= bare + {TOLERANCE}" if default else "", neutral if default else None,
            note="" if default or neutral else "costs words")
    return {"engine": engine, "setting": setting, "default": default, "wer": agent_wer, "bare_wer": bare_wer,
            "seconds": result.seconds, "cpu_s": result.cpu_s, "ratio_vs_bare_cli": ratio,
            "cpu_ratio_vs_bare_cli": cpu_ratio, "load": load, "texts": result.texts}


def _self_cpu_s() -> float:
    """This process's CPU seconds, all threads (the in-process bare engines run here)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _bare_faster_whisper(recordings: list[Recording], folder: Path, beam: int = 5) -> RunResult:
    """faster-whisper with its own defaults, file by file, model loaded once (not timed)."""
    import numpy as np
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=2)
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bare-fw-") as tmp:
        wavs = [to_16k_wav(r.path, Path(tmp) / r.name) for r in recordings]
        started, cpu = time.monotonic(), _self_cpu_s()
        for rec, path in zip(recordings, wavs):
            with wave.open(str(path)) as w:
                samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
            segments, _ = model.transcribe(samples, language="en", beam_size=beam)
            texts[rec.name] = " ".join(s.text.strip() for s in segments)
        seconds, cpu = time.monotonic() - started, _self_cpu_s() - cpu
    del model
    return RunResult(texts, seconds, cpu_s=cpu)


def _bare_pocketsphinx(recordings: list[Recording]) -> RunResult:
    """PocketSphinx's own default decoder (US-English dictation model from its wheel), file by file."""
    import pocketsphinx

    decoder = pocketsphinx.Decoder(loglevel="FATAL")
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bare-ps-") as tmp:
        wavs = [to_16k_wav(r.path, Path(tmp) / r.name) for r in recordings]
        started, cpu = time.monotonic(), _self_cpu_s()
        for rec, path in zip(recordings, wavs):
            with wave.open(str(path)) as w:
                data = w.readframes(w.getnframes())
            decoder.start_utt()
            decoder.process_raw(data, no_search=False, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            texts[rec.name] = hyp.hypstr if hyp is not None else ""
        seconds, cpu = time.monotonic() - started, _self_cpu_s() - cpu
    return RunResult(texts, seconds, cpu_s=cpu)


def run(res: Results, work: Path, port: int, quick: bool) -> dict:
    from tests.support.models import faster_whisper_model_dir, whisper_cpp_binary, whisper_cpp_model

    recordings = real_speech.recordings()
    raw: dict[str, Any] = {"recordings": [(r.name, r.text, r.source) for r in recordings], "rows": []}
    if len(recordings) < 10:
        res.add(SECTION, "real speech recordings", f"{len(recordings)} found", status="SKIP",
                note=real_speech.unavailable())
        return raw
    words = sum(len(real_speech.normalize(r.text)) for r in recordings)
    res.add(SECTION, "recordings of real people", f"{len(recordings)} files, {words} words "
            f"({', '.join(sorted({r.source for r in recordings}))})")
    binary, model = whisper_cpp_binary(), whisper_cpp_model()
    if not (binary.exists() and model.exists()):
        res.add(SECTION, "whisper.cpp", "program or ../shared/models/ggml-base.bin missing", status="SKIP")
        return raw

    n = 0
    loads: dict[int, str] = {}   # id(result) -> the load at the end of that agent run

    def burst(transcriber: dict[str, Any]) -> RunResult | None:
        """One agent run; a failed run is an ERROR row of its own, so the other settings still report."""
        nonlocal n
        n += 1
        try:
            result = agent_burst(fresh_dir(work / f"speech{n}"), port, transcriber, recordings)
            loads[id(result)] = _load()
            return result
        except (AssertionError, OSError, RuntimeError) as exc:
            res.add(SECTION, f"agent run {n} ({transcriber})", f"failed: {str(exc)[:300]}", status="ERROR")
            return None

    first = bare_whisper_cpp(binary, model, recordings)
    first_load = _load()
    bare_cpp_wer = _wer(recordings, first.texts)
    cpp = {"binary": str(binary), "model": str(model), "threads": 2}
    cpp_runs: list[tuple[str, bool, RunResult | None]] = []
    for k, (batch, beam, ctx) in enumerate(CPP_QUICK if quick else CPP_GRID):
        setting = f"batch={batch} beam={beam} audio_ctx={'auto' if ctx is None else 'full'}"
        result = burst({"engine": "whisper_cpp", "whisper_cpp": {**cpp, "batch": batch, "beam_size": beam,
                                                                  "audio_ctx": ctx}})
        cpp_runs.append((setting, k == 0, result))
    last = bare_whisper_cpp(binary, model, recordings)
    yardstick = RunResult(first.texts, (first.seconds + last.seconds) / 2, cpu_s=(first.cpu_s + last.cpu_s) / 2)
    res.add(SECTION, "whisper.cpp CLI by hand, file by file (its defaults: 5 beams, full window)",
            f"WER {bare_cpp_wer:.3f}; CPU {yardstick.cpu_s:.0f} s (first {first.cpu_s:.0f}, last {last.cpu_s:.0f}); "
            f"wall {yardstick.seconds:.1f} s (first {first.seconds:.1f}, last {last.seconds:.1f}); "
            f"{first_load} / {_load()}",
            note="" if _wer(recordings, last.texts) == bare_cpp_wer else "the two bare runs' words differ")
    for setting, default, result in cpp_runs:
        if result is None:
            continue
        raw["rows"].append(_row(res, "whisper_cpp", setting, default, recordings, result, bare_cpp_wer,
                                "bare CLI", yardstick, loads.get(id(result), "")))
    raw["bare_whisper_cpp"] = {"wer": bare_cpp_wer, "seconds": [first.seconds, last.seconds],
                               "cpu_s": [first.cpu_s, last.cpu_s], "texts": first.texts}

    try:
        import faster_whisper  # noqa: F401
        folder = faster_whisper_model_dir(REPO / ".cache/models/faster-whisper-base")
    except (ImportError, FileNotFoundError) as exc:
        res.add(SECTION, "faster_whisper", f"not available: {exc}", status="SKIP")
    else:
        bare_fw = _bare_faster_whisper(recordings, folder)
        bare_fw_wer = _wer(recordings, bare_fw.texts)
        res.add(SECTION, "faster-whisper by hand, file by file (its defaults: 5 beams), model loaded",
                f"WER {bare_fw_wer:.3f}; CPU {bare_fw.cpu_s:.0f} s = {yardstick.cpu_s / bare_fw.cpu_s:.2f}x bare CLI; "
                f"wall {bare_fw.seconds:.1f} s = {yardstick.seconds / bare_fw.seconds:.2f}x; {_load()}")
        for k, beam in enumerate(FW_GRID[:1] if quick else FW_GRID):
            result = burst({"engine": "faster_whisper", "faster_whisper": {"model": "base", "beam_size": beam}})
            if result is None:
                continue
            raw["rows"].append(_row(res, "faster_whisper", f"base int8 beam={beam}", k == 0, recordings, result,
                                    bare_fw_wer, "bare faster-whisper", yardstick, loads.get(id(result), "")))
        raw["bare_faster_whisper"] = {"wer": bare_fw_wer, "seconds": bare_fw.seconds, "cpu_s": bare_fw.cpu_s,
                                      "texts": bare_fw.texts}

    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        res.add(SECTION, "pocketsphinx", "not installed", status="SKIP")
    else:
        bare_ps = _bare_pocketsphinx(recordings)
        bare_ps_wer = _wer(recordings, bare_ps.texts)
        res.add(SECTION, "PocketSphinx by hand, file by file (its default dictation decoder)",
                f"WER {bare_ps_wer:.3f}; CPU {bare_ps.cpu_s:.0f} s = {yardstick.cpu_s / bare_ps.cpu_s:.2f}x bare CLI; "
                f"wall {bare_ps.seconds:.1f} s = {yardstick.seconds / bare_ps.seconds:.2f}x; {_load()}")
        result = burst({"engine": "pocketsphinx"})
        if result is not None:
            raw["rows"].append(_row(res, "pocketsphinx", "dictation (no grammar)", True, recordings, result,
                                    bare_ps_wer, "bare PocketSphinx", yardstick, loads.get(id(result), "")))
        raw["bare_pocketsphinx"] = {"wer": bare_ps_wer, "seconds": bare_ps.seconds, "cpu_s": bare_ps.cpu_s,
                                    "texts": bare_ps.texts}
    res.raw["speech"] = raw
    return raw
