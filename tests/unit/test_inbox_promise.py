"""The inbox states its promise exactly: at-least-once with one record."""

from __future__ import annotations

import agent.sources.inbox


def test_inbox_docstring_states_at_least_once_with_one_record() -> None:
    doc = " ".join((agent.sources.inbox.__doc__ or "").split())
    assert "at-least-once with one record" in doc
    assert "never processed twice" not in doc and "never process it twice" not in doc
