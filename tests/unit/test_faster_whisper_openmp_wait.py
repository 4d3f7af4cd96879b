"""faster-whisper's OpenMP threads sleep while they wait, instead of spinning (issue #16).

Why: CTranslate2's libgomp lets a waiting thread spin for milliseconds at every barrier; on a
busy machine that tripled the agent's CPU for the same words (docs/performance.md, "Speed and
accuracy on real speech"). libgomp reads OMP_WAIT_POLICY once, when CTranslate2 is imported,
so what matters is the value at the moment faster_whisper is imported: the fake module below
records it then.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from agent.engines import make_transcriber
from agent.errors import EngineError
from agent.settings import TranscriberSettings


def _policy_at_import(monkeypatch: pytest.MonkeyPatch) -> str | None:
    seen: dict[str, str | None] = {}

    class RecordingModule(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            seen.setdefault("policy", os.environ.get("OMP_WAIT_POLICY"))
            raise AttributeError(name)   # `from faster_whisper import WhisperModel` fails: unavailable

    monkeypatch.setitem(sys.modules, "faster_whisper", RecordingModule("faster_whisper"))
    with pytest.raises(EngineError) as info:
        make_transcriber(TranscriberSettings(engine="faster_whisper")).load()
    assert info.value.code == "engine_unavailable"
    return seen.get("policy")


def test_openmp_wait_policy_is_passive_before_ctranslate2_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert _policy_at_import(monkeypatch) == "PASSIVE"


def test_a_wait_policy_the_user_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert _policy_at_import(monkeypatch) == "ACTIVE"
