"""whisper.cpp's audio context (`-ac`): how much of its 30 s encoder window a run encodes.

A shorter window is most of the speed a short clip can gain, and costs words on real speech
(docs/performance.md), so auto sizing is opt-in (`transcriber.whisper_cpp.audio_ctx: null`).
"""

from __future__ import annotations

import math

FULL_CTX = 1500          # whisper's whole 30 s window, in 20 ms encoder positions
_CTX_STEP_S = 0.02
_AUTO_CTX_MARGIN_S = 2.0  # room after the clip, so its last words are never at the window's edge
_AUTO_CTX_MIN = 512       # 10 s: on 27 commands of 1-3 s, 512 had WER 0.18 against 0.22 for the full
                          # window; 256 had 0.31 against 0.30 and hit slow decoder fallbacks
_AUTO_CTX_ROUND = 64


def audio_ctx_for(duration_s: float, setting: int | None) -> int:
    """The `-ac` value for a run over `duration_s` of audio; `setting` None means auto.

    Auto covers the clip plus a margin, rounded up, never under 512 positions (10 s). Measured
    on 36 espeak sentences of 1-10 s: half the run time of the full window at an equal or lower
    word error rate; with a 256 minimum one short command came out as gibberish.
    """
    if setting is not None:
        return setting
    needed = math.ceil((duration_s + _AUTO_CTX_MARGIN_S) / _CTX_STEP_S)
    rounded = math.ceil(needed / _AUTO_CTX_ROUND) * _AUTO_CTX_ROUND
    return min(FULL_CTX, max(_AUTO_CTX_MIN, rounded))


def packed_audio_ctx(longest_s: float, setting: int | None) -> int:
    """The `-ac` of a run over joined packs: enough for the longest pack whatever the setting
    (a smaller window would cut its end off), the full window when the setting asks for it."""
    if setting == 0:
        return 0
    return max(audio_ctx_for(longest_s, None), setting or 0)
