"""The Python version pyproject.toml requires is the one the command line checks at start."""

from __future__ import annotations

from tests.support.agent import REPO


def test_requires_python_matches_the_runtime_check() -> None:
    from agent.__main__ import MIN_PYTHON
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'requires-python = ">={MIN_PYTHON[0]}.{MIN_PYTHON[1]}"' in pyproject
