"""whisper.cpp through its command-line program, one process per run.

Why a CLI and not bindings: the process exits after each run, so the ~150 MB model never stays
resident on a 512 MB Pi; the page cache keeps the next load cheap. Audio reaches the program
without a disk round trip: a file that is already a 16 kHz mono WAV is passed by path, anything
else is piped as WAV bytes through standard input (`-f -`). A named pipe was measured to hang
this binary (see ../shared/models/README.md), so it is not used; a tmpfs file is the fallback.

Speed and accuracy, measured on 2 cores with the base model on 20 recordings of real people
(tests/support/real_speech.py; bench section 9 and docs/performance.md have the table). The
defaults decode exactly as the program does when a user runs it by hand (`-nt`, its own 5 beams,
its full 30 s window), so the agent makes the same word errors (8 in 117) as the bare program:

- `batch: files` (default): several waiting files go to ONE run, one `-f` each; the model loads
  once and each file's words are the same as alone. Only about 1.1x faster, because whisper.cpp
  pads every input to its 30 s encoder window and that encoder pass is most of the time.
- The tricks that would cut that time all changed words on real speech, so they are opt-in:
  `audio_ctx: null` (auto: the window shrunk to the clip plus 2 s, see `audio_ctx_for`; 2.6x
  faster, 11 errors), `beam_size: 1` (greedy; 0.85 of the time, 10 errors) and `batch: concat`
  (clips joined into packs of up to 18 s that share a window, split again by timestamps, see
  `whisper_concat`; neighbours turned "ten of clubs" into "ten of clothes": 11 errors). On espeak
  sentences they had looked free; on people they were not.

Importing this module and `load()` do not import numpy (15 MB resident on an idle agent): the
warm-up WAV is built with the stdlib, and numpy comes in with the first real audio.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.audio.clip import SAMPLE_RATE, Audio

from agent.engines.base import Progress, Transcript
from agent.engines.deadline import bounded, expired
from agent.engines.process import find_program, sweep_group
from agent.engines.whisper_concat import (
    assign_segments, join_with_gaps, packs_of, parse_segments, voiced_frames)
from agent.engines.whisper_ctx import FULL_CTX, audio_ctx_for, packed_audio_ctx
from agent.engines.non_speech import spoken
from agent.engines.whisper_output import error_lines, last_problem, text_of
from agent.engines.whisper_stream import OutputWatch, ProgressReader, communicate
from agent.errors import EngineError
from agent.settings import TranscriberSettings

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_SHM = Path("/dev/shm")

@dataclass
class _Run:
    returncode: int
    stdout: str
    stderr: str


def _tmp_root() -> str | None:
    """tmpfs when the system has one, so a temporary WAV never touches the SD card."""
    return str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None


def silence_wav(seconds: float) -> bytes:
    """A 16 kHz mono 16-bit WAV of digital silence, built with the stdlib (no numpy)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(bytes(2 * int(seconds * SAMPLE_RATE)))
    return buf.getvalue()


def _wav_of(samples: np.ndarray) -> bytes:
    from agent.audio.wav import encode_wav  # numpy comes with it: only once there is real audio

    return encode_wav(samples)


class WhisperCppTranscriber:
    """Transcriber that runs the whisper.cpp CLI (`whisper-cpp`, or `whisper-cli`/`main`)."""

    name = "whisper_cpp"

    def __init__(self, settings: TranscriberSettings) -> None:
        self._settings = settings
        self._cfg = settings.whisper_cpp
        self._binary: str | None = None
        self._model: str | None = None
        # One run at a time: on 2 cores, two concurrent runs took 29 s instead of 2 x 2 s.
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        # None = not yet known; True once `-f -` worked; False when only files work.
        self._stdin_ok: bool | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def _timeout_s(self) -> float:
        return min(self._settings.timeout_s, self._cfg.timeout_s)

    def _resolve(self) -> tuple[str, str]:
        """Binary and model paths, or engine_unavailable saying exactly what is missing."""
        if self._binary and self._model:
            return self._binary, self._model
        configured = self._cfg.binary
        binary = find_program(configured)
        if binary is None:
            raise EngineError(
                f"whisper.cpp program {configured!r} not found (install voice-agent[whisper-cpp] "
                "or set transcriber.whisper_cpp.binary)",
                code="engine_unavailable",
            )
        model = self._cfg.model
        if not model:
            raise EngineError("no whisper.cpp model configured (set transcriber.whisper_cpp.model "
                              "to a ggml .bin file)", code="engine_unavailable")
        if not Path(model).is_file():
            raise EngineError(f"whisper.cpp model not found: {model}", code="engine_unavailable")
        self._binary, self._model = binary, str(model)
        return self._binary, self._model

    def load(self) -> None:
        """Check program and model, then run 0.5 s of silence so the model is in the page cache.

        The silence is built without numpy, so a warmed-up idle agent still has none loaded.
        """
        self._resolve()
        started = time.monotonic()
        run = self._run_wav(silence_wav(0.5), self._ctx_args(0.5), self._timeout_s)
        try:
            self._single_text(run)
        except EngineError as exc:
            if exc.code != "engine_killed":
                raise
            # Killed (out of memory, most likely): program and model are there, and whether a job
            # fits is admission's to judge when it comes; an engine marked unavailable never would.
            log.warning("whisper.cpp warm-up: %s; the engine stays available", exc.message)
            return
        log.info("whisper.cpp warm-up took %.2f s", time.monotonic() - started)

    def close(self) -> None:
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)

    # -- running the program -----------------------------------------------------------------

    def _args(self, inputs: list[str], extra: list[str]) -> list[str]:
        """The command line; the configured extra_args come last so they can override ours.
        `-nt` is decided with the window (`_ctx_args`)."""
        binary, model = self._resolve()
        args = [binary, "-m", model]
        for item in inputs:
            args += ["-f", item]
        args += ["-l", self._settings.language or "auto", "-t", str(self._cfg.threads),
                 "-bs", str(self._cfg.beam_size), "-np", *extra]
        return args + [str(a) for a in self._cfg.extra_args]

    def _ctx_args(self, duration_s: float) -> list[str]:
        """`-ac`, and `-nt` exactly when the window is whisper's whole one.

        Why: with the full window and `-nt` a run decodes exactly as the program does when a user
        runs it by hand (same words, measured on 20 real recordings, alone or several `-f` in one
        run). With a reduced window, `-nt` made this binary repeat short clips ("Turn off the
        bedroom light. Turn off the bedroom light.") and take 4x longer, so timestamps stay on
        there and `text_of` cuts them off.
        """
        ctx = audio_ctx_for(duration_s, self._cfg.audio_ctx)
        return ["-ac", str(ctx), *(["-nt"] if ctx in (0, FULL_CTX) else [])]

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        """Kill the whole process group (the program was started in its own session)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not get ignored
            log.error("whisper.cpp process %s did not die after SIGKILL", proc.pid)

    def _run(self, args: list[str], stdin: bytes | None, timeout_s: float, watch: OutputWatch | None = None) -> _Run:
        """One run of the program; `watch` sees its output as it comes (progress)."""
        if self._closed:
            raise EngineError("whisper.cpp transcriber is closed", code="engine_unavailable")
        timeout_s = bounded(timeout_s)  # never past the job's deadline: the child dies with it
        with self._lock:
            try:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # so a timeout can kill the whole group
                )
            except OSError as exc:
                raise EngineError(f"cannot start whisper.cpp: {exc}", code="engine_unavailable") from exc
            self._proc = proc
            try:
                out, err = proc.communicate(input=stdin, timeout=timeout_s) if watch is None else \
                    communicate(proc, stdin, timeout_s, watch)
            except subprocess.TimeoutExpired as exc:
                self._kill(proc)
                raise expired("whisper.cpp", timeout_s) from exc
            except BaseException:
                self._kill(proc)
                raise
            finally:
                self._proc = None
                sweep_group(proc)   # nothing the run forked outlives it
        return _Run(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def _run_wav(self, wav: bytes, extra: list[str], timeout_s: float, watch: OutputWatch | None = None) -> _Run:
        """One run over in-memory WAV bytes: through stdin, or a tmpfs file if stdin fails."""
        if self._stdin_ok is not False:
            run = self._run(self._args(["-"], extra), wav, timeout_s, watch)
            failed = run.returncode != 0 or (bool(error_lines(run.stderr)) and not run.stdout.strip())
            if not failed or self._stdin_ok:
                self._stdin_ok = True
                return run
            # `wav` is well-formed by construction, so a failure here before stdin ever worked
            # means this build cannot read `-f -`.
            log.warning("whisper.cpp could not read stdin (%s); using tmpfs files instead",
                        last_problem(run.stderr))
        with tempfile.TemporaryDirectory(prefix="whisper-cpp-", dir=_tmp_root()) as tmp:
            path = Path(tmp) / "audio.wav"
            path.write_bytes(wav)
            run = self._run(self._args([str(path)], extra), None, timeout_s, watch)
        if self._stdin_ok is None and run.returncode == 0 and not error_lines(run.stderr):
            self._stdin_ok = False  # the file worked where stdin did not: stop trying stdin
        return run

    # -- single ------------------------------------------------------------------------------

    def _transcript(self, text: str) -> Transcript:
        """Every path's final text, without tags and spelled sounds for what is not speech
        ("[Music]", "(screaming)": agent/engines/non_speech.py)."""
        language = self._settings.language if self._settings.language != "auto" else None
        return Transcript(text=spoken(text), engine=self.name, language=language)

    @staticmethod
    def _single_text(run: _Run) -> str:
        if run.returncode < 0:
            # Killed by a signal we did not send (a timeout is engine_timeout): on a small device
            # the kernel's OOM killer. Not the input's fault; the file is tried again (agent/jobs/retry.py).
            raise EngineError(f"whisper.cpp was killed by signal {-run.returncode} (out of memory?)",
                              code="engine_killed")
        if run.returncode != 0:
            raise EngineError(f"whisper.cpp exited with {run.returncode}: {last_problem(run.stderr)}",
                              code="engine_error")
        if error_lines(run.stderr) and not run.stdout.strip():
            # The program skips unreadable input and still exits 0.
            raise EngineError(f"whisper.cpp: {last_problem(run.stderr)}", code="engine_error")
        return text_of(run.stdout)

    #: A single run reports progress (batches do not): see `transcribe`.
    reports_progress = True

    def transcribe(self, audio: Audio, progress: Progress | None = None) -> Transcript:
        """One run over one input. With `progress`, `-pp` is added (it only prints, the words are
        the same) and the output is read as it comes (agent.engines.whisper_stream)."""
        extra = self._ctx_args(audio.duration_s)
        watch = None
        if progress is not None:
            extra.append("-pp")
            watch = ProgressReader(audio.duration_s, progress, text_of)
        if audio.path is not None:
            run = self._run(self._args([str(audio.path)], extra), None, self._timeout_s, watch)
        else:
            run = self._run_wav(_wav_of(audio.samples), extra, self._timeout_s, watch)
        return self._transcript(self._single_text(run))

    def _single_result(self, audio: Audio) -> Transcript | Exception:
        try:
            return self.transcribe(audio)
        except EngineError as exc:
            if exc.code == "engine_unavailable":
                raise
            return exc

    # -- batch -------------------------------------------------------------------------------

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Several inputs with fewer runs (see `batch`); one result or error per input, in order.

        Whatever the mode, an input the shared run could not answer is transcribed alone, so
        every input gets its own result or error; only engine_unavailable fails the batch.
        """
        if not audios:
            return []
        mode = self._cfg.batch
        if len(audios) == 1 or mode == "off":
            return [self._single_result(a) for a in audios]
        if mode == "files":
            return self._batch_files(audios)
        return self._batch_concat(audios)

    def _batch_concat(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Join the inputs into packs of one encoder window each, transcribe every pack in one run,
        split each pack's text by its timestamps; what stays unsplit is redone as a `files` batch."""
        results: list[Transcript | Exception | None] = [None] * len(audios)
        empty, packs = packs_of([a.duration_s for a in audios])
        for i in empty:
            results[i] = self._transcript("")
        for pack, texts in zip(packs, self._packed_run([[audios[i] for i in pack] for pack in packs])):
            for i, text in zip(pack, texts):
                if text is not None:
                    results[i] = self._transcript(text)
        rest = [i for i, r in enumerate(results) if r is None]   # in no pack, doubtful, or failed
        redone = self._batch_files([audios[i] for i in rest]) if len(rest) > 1 else \
            [self._single_result(audios[i]) for i in rest]
        for i, result in zip(rest, redone):
            results[i] = result
        return [r for r in results if r is not None]

    def _packed_run(self, packs: list[list[Audio]]) -> list[list[str | None]]:
        """Each pack's inputs' texts from one run over all packs; None where an input must be redone.

        Every pack is one joined WAV in tmpfs and one `-f`, with full JSON output (`-ojf`: token
        times) to its own `-of`. `-ac` covers the longest pack (see `packed_audio_ctx`). `-mc 0`:
        no pack's text is the prompt of the next, so one input's words cannot steer another's.
        """
        if not packs:
            return []
        failed: list[list[str | None]] = [[None] * len(pack) for pack in packs]
        with tempfile.TemporaryDirectory(prefix="whisper-cpp-", dir=_tmp_root()) as tmp:
            layouts: list[tuple[list[tuple[float, float]], list[np.ndarray]]] = []
            inputs: list[str] = []
            outputs: list[str] = []
            longest = 0.0
            for k, pack in enumerate(packs):
                parts = [audio.samples for audio in pack]
                joined, spans = join_with_gaps(parts)
                longest = max(longest, len(joined) / SAMPLE_RATE)
                path = Path(tmp) / f"pack-{k}.wav"
                path.write_bytes(_wav_of(joined))
                inputs.append(str(path))
                outputs += ["-of", str(path.with_suffix(""))]
                layouts.append((spans, [voiced_frames(p) for p in parts]))
            extra = ["-ac", str(packed_audio_ctx(longest, self._cfg.audio_ctx)), "-mc", "0", "-ojf", *outputs]
            timeout_s = self._timeout_s * sum(len(pack) for pack in packs)
            try:
                run = self._run(self._args(inputs, extra), None, timeout_s)
            except EngineError as exc:
                if exc.code == "engine_unavailable":
                    raise
                log.warning("whisper.cpp joined run failed (%s); its inputs are redone", exc.message)
                return failed
            if run.returncode != 0:
                log.warning("whisper.cpp joined run exited with %s (%s); its inputs are redone",
                            run.returncode, last_problem(run.stderr))
                return failed
            out: list[list[str | None]] = []
            for k, (spans, voiced) in enumerate(layouts):
                try:
                    segments = parse_segments(Path(inputs[k]).with_suffix(".json").read_bytes())
                except (OSError, ValueError) as exc:
                    log.warning("whisper.cpp wrote no usable JSON for a pack (%s); its inputs are redone", exc)
                    out.append(failed[k])
                    continue
                texts, doubtful = assign_segments(segments, spans, voiced)
                if doubtful:
                    log.info("whisper.cpp: %d of %d joined inputs are redone (segments ran across inputs "
                             "or one got no text)", len(doubtful), len(spans))
                out.append([None if i in doubtful else text for i, text in enumerate(texts)])
        return out

    def _batch_files(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """One run with one `-f` per input (model loaded once); any input that fails is retried alone.

        Each input's result is read from its own `-otxt` file, so a corrupt input only lacks
        its file. If the run fails as a whole (crash, timeout, non-zero exit), whatever files
        were already written are kept and the rest are transcribed one by one, so every input
        gets its own result or error, in order.
        """
        results: list[Transcript | Exception | None] = [None] * len(audios)
        with tempfile.TemporaryDirectory(prefix="whisper-cpp-", dir=_tmp_root()) as tmp:
            inputs: list[str] = []
            for i, audio in enumerate(audios):
                if audio.path is not None:
                    inputs.append(str(audio.path))
                else:
                    path = Path(tmp) / f"in-{i}.wav"
                    path.write_bytes(_wav_of(audio.samples))
                    inputs.append(str(path))
            outputs = [Path(tmp) / f"out-{i}" for i in range(len(audios))]
            extra = self._ctx_args(max(a.duration_s for a in audios)) + ["-otxt"]
            for out in outputs:
                extra += ["-of", str(out)]
            try:
                run: _Run | None = self._run(self._args(inputs, extra), None, self._timeout_s * len(audios))
            except EngineError as exc:
                if exc.code == "engine_unavailable":
                    raise
                log.warning("whisper.cpp batch run failed (%s); finishing one by one", exc)
                run = None
            whole_run_ok = run is not None and run.returncode == 0
            for i, out in enumerate(outputs):
                txt = out.with_suffix(".txt")
                if txt.is_file():
                    results[i] = self._transcript(text_of(txt.read_text("utf-8", "replace")))
                elif whole_run_ok:
                    assert run is not None
                    results[i] = self._input_error(inputs[i], run.stderr)
            if run is not None and run.returncode != 0:
                log.warning("whisper.cpp batch exited with %s (%s); finishing one by one",
                            run.returncode, last_problem(run.stderr))
        for i, audio in enumerate(audios):
            if results[i] is None:
                results[i] = self._single_result(audio)
        return [r for r in results if r is not None]

    @staticmethod
    def _input_error(path: str, stderr: str) -> EngineError:
        quoted = f"'{path}'"
        mine = [line for line in error_lines(stderr) if quoted in line]
        message = mine[-1] if mine else "whisper.cpp wrote no transcript for this input"
        return EngineError(f"whisper.cpp: {message}", code="engine_error")
