"""`voice-agent --version` and `version` print the package version; an older Python gets a clear
message, not a traceback.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from agent import __version__
from tests.support.agent import REPO
from tests.support.cli import cli


def test_version_flag_and_command_print_the_package_version() -> None:
    flag = cli("--version")
    assert flag.returncode == 0, flag.stderr
    assert flag.stdout.strip() == f"voice-agent {__version__}"
    command = cli("version")
    assert command.returncode == 0 and command.stdout.strip() == __version__


def _python39() -> str | None:
    """A working Python 3.9 (pyenv's shim on PATH may be there and still refuse to run)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for python in [*reversed(candidates), shutil.which("python3.9")]:
        if python and subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 9))"],
                                     capture_output=True, timeout=30).returncode == 0:
            return python
    return None


def test_an_older_python_gets_a_clear_message_not_a_traceback() -> None:
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter on this machine (pyenv or python3.9 on PATH)")
    out = subprocess.run([python, "-m", "agent", "version"], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 78, out.stderr
    assert "needs Python 3.10 or newer" in out.stderr and "3.9" in out.stderr
    assert "Traceback" not in out.stderr
