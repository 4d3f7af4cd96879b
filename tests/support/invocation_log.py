"""A program behind a wrapper that logs each command line it is run with, to count and read the runs."""

from __future__ import annotations

import stat
import sys
from pathlib import Path


def recording_wrapper(tmp: Path, real: Path) -> tuple[Path, Path]:
    """The REAL whisper.cpp binary behind a wrapper that appends each argv to a log file."""
    log = tmp / "whisper-invocations.jsonl"
    wrapper = tmp / "whisper-cpp-recorded"
    wrapper.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
os.execv({str(real)!r}, [{str(real)!r}, *sys.argv[1:]])
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper, log
