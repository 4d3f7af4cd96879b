"""Reading a whisper.cpp run as it goes: its printed segments and `-pp` progress.

Why: on a long recording the program works for minutes; it prints each segment's text on stdout
as soon as it is decoded (flushed; with `-nt` without a line break) and, with `-pp`, writes
"progress = N%" lines on stderr. `Popen.communicate` only returns at the end, so a run that
reports progress is read here instead: one thread feeds stdin and one drains each pipe, in
whatever pieces arrive (three streams, none can fill up and block the child: no deadlock), while
the caller waits with its timeout as before.
"""

from __future__ import annotations

import codecs
import logging
import re
import subprocess
import threading
import time
from typing import Any, Callable

from agent.engines.base import Progress

log = logging.getLogger(__name__)

OutputWatch = Callable[[str, str], None]   # (stream "out" | "err", text as it arrives)

# "whisper_print_progress_callback: progress =  45%": the share of the audio's 10 ms frames the
# decoder has moved past (it passes 100 % in the last, padded window, hence the clamp)
_PROGRESS = re.compile(r"progress\s*=\s*(\d+)\s*%")
# "[00:01:02.500 --> 00:01:05.000]  text" when timestamps are on (a reduced window, see `_ctx_args`)
_SEGMENT_END = re.compile(r"^\[\d+:\d\d:\d\d\.\d+ --> (\d+):(\d\d):(\d\d\.\d+)\]", re.MULTILINE)


class ProgressReader:
    """Turns a single-input run's output into `progress(fraction, text so far)` calls.

    The fraction is the larger of the program's own percentage and the last segment's end time
    over the audio's duration (when timestamps are printed); the text is all stdout so far,
    cleaned as the final transcript is (`clean`), so it is the start of that transcript.
    """

    def __init__(self, duration_s: float, progress: Progress, clean: Callable[[str], str]) -> None:
        self._duration_s = duration_s
        self._progress = progress
        self._clean = clean
        self._out = ""
        self._err = ""
        self._fraction = 0.0
        self._last: tuple[float, str] = (0.0, "")
        self._lock = threading.Lock()   # called from the stdout and the stderr reader threads

    def __call__(self, stream: str, text: str) -> None:
        with self._lock:
            if stream == "err":
                self._err += text
                *lines, self._err = self._err.split("\n")   # only whole lines; keep the rest
                percents = [int(m.group(1)) for line in lines for m in [_PROGRESS.search(line)] if m]
                if not percents:
                    return
                self._fraction = max(self._fraction, min(1.0, max(percents) / 100))
            else:
                self._out += text
                ends = list(_SEGMENT_END.finditer(self._out))
                if ends and self._duration_s > 0:
                    h, m, sec = ends[-1].groups()
                    self._fraction = max(self._fraction, min(1.0, (int(h) * 3600 + int(m) * 60 + float(sec))
                                                             / self._duration_s))
            now = (self._fraction, self._clean(self._out))
            if now == self._last:   # e.g. a bare line break: nothing new to tell
                return
            self._last = now
        self._progress(*now)


def communicate(proc: subprocess.Popen[bytes], stdin: bytes | None, timeout_s: float,
                watch: OutputWatch) -> tuple[bytes, bytes]:
    """`proc.communicate(stdin, timeout_s)`, with the output shown to `watch` as it comes.

    Raises subprocess.TimeoutExpired like communicate (the caller kills the process group, which
    closes the pipes and ends the threads). A failing `watch` is logged, never fatal to the run.
    """
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin or b"")
        except (BrokenPipeError, OSError):   # the program stopped reading: its exit code says why
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def drain(stream: str, pipe: Any) -> None:
        decode = codecs.getincrementaldecoder("utf-8")("replace")   # a character split across reads
        for raw in iter(lambda: pipe.read1(65536), b""):
            chunks[stream].append(raw)
            try:
                watch(stream, decode.decode(raw))
            except Exception:   # progress is a courtesy: the transcript must not depend on it
                log.exception("whisper.cpp output watcher failed")

    threads = [threading.Thread(target=drain, args=("out", proc.stdout), name="whisper-out", daemon=True),
               threading.Thread(target=drain, args=("err", proc.stderr), name="whisper-err", daemon=True)]
    if stdin is not None:
        threads.append(threading.Thread(target=feed, name="whisper-in", daemon=True))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise subprocess.TimeoutExpired(proc.args, timeout_s) from None
    for thread in threads:   # the pipes close when the program exits (or a grandchild lets go)
        thread.join(max(0.1, deadline - time.monotonic()))
    return b"".join(chunks["out"]), b"".join(chunks["err"])
