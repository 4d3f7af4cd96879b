"""`voice-agent doctor`'s package check in process: a missing Python package is exit code 69."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agent.ops import doctor


def test_python_package_not_installed_is_69(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process: pocketsphinx is installed here, so the package looked for is one that is not."""
    monkeypatch.setitem(doctor.PYTHON_PACKAGES, "pocketsphinx", ("no_such_sphinx_pkg", "voice-agent[pocketsphinx]"))
    from agent.settings import TranscriberSettings
    [finding] = doctor.transcriber_findings(TranscriberSettings(engine="pocketsphinx"))
    assert finding.code == 69 and "no_such_sphinx_pkg is not installed" in finding.detail
    assert "pip install 'voice-agent[pocketsphinx]'" in finding.line()
    [finding] = doctor.transcriber_findings(TranscriberSettings(engine="faster_whisper"))
    assert finding.ok == (importlib.util.find_spec("faster_whisper") is not None)
