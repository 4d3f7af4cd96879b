"""No words from sounds that are not speech: what every transcriber's text goes through last.

Why: on screams, laughter, music and horns the Whisper-family models (and Moonshine) do not stay
silent. They write a tag ("[Music]", "(screaming)", "♪ ♪", "-") or spell the sound ("AHHHHH!",
"WAAAAhahaha", "gah gah gah"). Neither is something a person said, and both would reach
summaries and automations as words. On long non-speech sound they also write what their
training subtitles ended with: a credit line ("© transcript Emily Beynon", "Subtitles by the
Amara.org community"), never something a person in the room said. This removes tags and credit
lines and, when nothing but vocal sounds is left, the whole text. Words stay words: "yeah" or "no" are never removed (a model that turns a
trombone into "Yes, yes" is caught by its own confidence, see agent/engines/faster_whisper.py).
"""

from __future__ import annotations

import re

#: "[Music]", "(screaming)", "*laughs*", "♪ la la ♪": what a model writes for a sound, not a word.
_TAG = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪[^♪]*♪|[♪♫♬]")
#: A subtitle credit: from a © sign, or a sentence opening with "subtitles / captions /
#: transcript(ion) by", to the sentence's end.
_TO_END = r"(?:[^.!?]|[.!?](?=\w))*[.!?]?"   # a dot inside a word (Amara.org) does not end it
_CREDIT = re.compile(rf"©{_TO_END}|(?:^|(?<=[.!?]\s))(?:subtitles|subtitled|captions|captioned|transcript(?:ion)?)\s+by\b"
                     rf"{_TO_END}", re.IGNORECASE)
#: Spelled vocal sounds: ah, ahhh, aah, oh, ooh, uh, um, hm, hmm, mm, ha, haha, heh, argh, eek,
#: waaa, whoa, ugh, gah... (a token made only of one of these, stretched or repeated).
_SOUND = re.compile(r"^(?:a+h*|o+h+|u+h+|u+m+|h+m+|m+|(?:h+a+)+h*|(?:a+h+)+a*|(?:h+e+)+h*|a+r+g+h+|e+k+|"
                    r"w+a+h*(?:h*a+)*|w+h+o+a+|u+g+h+|g+a+h+(?:\s+g+a+h+)*|(?:w*a+)+(?:h*a+)*)$")


def spoken(text: str) -> str:
    """`text` without tags, or "" when what is left holds no word (only sounds and punctuation)."""
    cleaned = " ".join(_CREDIT.sub(" ", _TAG.sub(" ", text)).split())
    tokens = [re.sub(r"[^\w']+", "", t).lower() for t in cleaned.split()]
    words = [t for t in tokens if t and not _SOUND.match(t)]
    return cleaned if words else ""
