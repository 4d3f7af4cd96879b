"""Sample conversion shared by every decode path: downmix, float to int16, resample into int16.

WAV (`agent.audio.riff`) and soundfile containers (`agent.audio.containers`) both end in
16 kHz mono int16; doing the last steps in one place keeps rounding, clipping and NaN handling
identical whichever container the audio came in. Everything works block by block so a long
recording never exists as a whole-file float copy (memory on a Pi Zero 2W).
"""

from __future__ import annotations

import numpy as np

from agent.audio.resample import Reader, output_length, resample_blocks
from agent.audio.clip import SAMPLE_RATE


def downmix(x: np.ndarray, channels: int) -> np.ndarray:
    """Mean of interleaved channels in float32 (no integer overflow).

    Adding strided channel slices is ~10x faster than numpy's mean over a short last axis,
    which was most of the decode time for stereo; the general reduction is kept for files
    with many channels, where a Python loop per channel would be the slow part.
    """
    if channels == 1:
        return x
    if channels > 16:
        return x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    acc = x[0::channels] + x[1::channels]
    for c in range(2, channels):
        acc += x[c::channels]
    acc *= np.float32(1 / channels)
    return acc


def render(read: Reader, n_in: int, rate: int) -> np.ndarray:
    """Resample (if needed) block by block into one preallocated int16 array."""
    out = np.empty(output_length(n_in, rate, SAMPLE_RATE), dtype=np.int16)
    pos = 0
    for block in resample_blocks(read, n_in, rate, SAMPLE_RATE):
        out[pos : pos + len(block)] = float_to_int16(block)
        pos += len(block)
    return out


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """Clip to [-1, 1], scale and round; NaN (from broken float files) becomes silence."""
    y = np.multiply(np.nan_to_num(x), 32768.0, dtype=np.float32)
    np.rint(y, out=y)
    np.clip(y, -32768.0, 32767.0, out=y)
    return y.astype(np.int16)
