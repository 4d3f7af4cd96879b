"""Assertions on the agent's typed audio refusals (AudioError with a code and a message)."""

from __future__ import annotations

import pytest

from agent.errors import AudioError


def expect_error(code: str, fn, *args, **kwargs) -> AudioError:
    """Call fn and require an AudioError with this code and a non-empty message."""
    with pytest.raises(AudioError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, f"expected {code}, got {info.value.code}: {info.value}"
    assert str(info.value), "messages must not be empty"
    return info.value
