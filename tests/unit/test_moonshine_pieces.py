"""How the Moonshine engine cuts a long file: at pauses, never losing a sample (no model needed)."""

from __future__ import annotations

import numpy as np

from agent.engines.moonshine import MAX_PIECE_S, pieces
from agent.engines.non_speech import spoken

RATE = 16_000


def test_a_long_file_is_cut_in_its_pauses_and_keeps_every_sample() -> None:
    rng = np.random.default_rng(7)
    loud = lambda s: (rng.standard_normal(int(s * RATE)) * 8000).astype(np.int16)   # noqa: E731
    quiet = lambda s: np.zeros(int(s * RATE), dtype=np.int16)                        # noqa: E731
    # 16 s of "speech", a 0.5 s pause, 16 s more, a pause, 10 s: 43 s in all.
    audio = np.concatenate([loud(16), quiet(0.5), loud(16), quiet(0.5), loud(10)])
    parts = pieces(audio)
    assert len(parts) == 3
    assert sum(len(p) for p in parts) == len(audio)
    assert np.array_equal(np.concatenate(parts), audio)
    assert all(len(p) <= MAX_PIECE_S * RATE for p in parts)
    first_cut = len(parts[0])
    assert 16 * RATE <= first_cut <= 16.5 * RATE, "cut inside the pause, not in the loud stretch"


def test_a_clip_shorter_than_a_piece_goes_whole() -> None:
    audio = np.ones(5 * RATE, dtype=np.int16)
    assert [len(p) for p in pieces(audio)] == [len(audio)]


def test_tags_and_spelled_sounds_are_no_words_but_words_stay() -> None:
    for sound in ("[Music]", "(screaming)", "♪ ♪", "-", "AHHHHH!", "WAAAAhahaha", "gah gah gah", "Hmm."):
        assert spoken(sound) == "", sound
    for said in ("Go forward 10 meters.", "Yes", "Oh, front center", "Five, five."):
        assert spoken(said) == said
    assert spoken("[Music] turn on the light") == "turn on the light"


def test_subtitle_credits_are_no_words_but_the_same_words_in_speech_stay() -> None:
    """Moonshine turned a foghorn into "© transcript Emily Beynon" (tests/e2e/test_non_speech.py)."""
    for credit in ("© transcript Emily Beynon", "Subtitles by the Amara.org community", "© BBC 2020"):
        assert spoken(credit) == "", credit
    assert spoken("Go forward 10 meters. © BBC 2020") == "Go forward 10 meters."
    for said in ("The transcript by the clerk was long.", "Captions are on."):
        assert spoken(said) == said
