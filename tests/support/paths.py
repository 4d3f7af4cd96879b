"""Where the repository is, for tests in any folder under tests/ (unit/, e2e/).

One constant instead of `Path(__file__).parents[n]` in every test module, whose n changes when a
test file moves.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
