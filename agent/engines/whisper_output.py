"""What the whisper.cpp program prints: transcript lines and the error lines worth reporting."""

from __future__ import annotations

import re

from agent.engines.whisper_concat import _MARKERS

# Without -nt each stdout line starts with "[00:00:00.000 --> 00:00:02.000]".
_TIMESTAMP = re.compile(r"^\[\d+:\d\d:\d\d\.\d+ --> \d+:\d\d:\d\d\.\d+\]\s*")


def text_of(output: str) -> str:
    """whisper.cpp prints one line per segment; a transcript is their joined text.

    The timestamp prefix is cut and the "[BLANK_AUDIO]" marker for silence is dropped: silence
    is an empty transcript.
    """
    lines = (_TIMESTAMP.sub("", line.strip()).strip() for line in output.splitlines())
    return " ".join(line for line in lines if line and line not in _MARKERS)


def error_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.strip().lower().startswith("error")]


def last_problem(stderr: str) -> str:
    """The most telling stderr line: the last `error:` line (a usage dump may follow it)."""
    errors = error_lines(stderr)
    if errors:
        return errors[-1]
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"
