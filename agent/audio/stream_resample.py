"""Live rate conversion to 16 kHz for sources that capture at another rate.

A microphone may only offer 44.1 or 48 kHz; the analyser wants exact 16 kHz frames. The
whole-array resampler in `agent.audio.resample` is turned into a stream converter here
(`StreamResampler`), and `RateConverting` puts it between a source's raw reads and its callers.
"""

from __future__ import annotations

import math
import time

import numpy as np

from agent.audio.source import TARGET_RATE, EndOfStream

_RESAMPLE_CONTEXT = 256  # input samples of context on each side of a block, against edge clicks
_RESAMPLE_BLOCK_S = 0.25  # audio converted per call to the resampler


class StreamResampler:
    """Chunk-by-chunk rate conversion to 16 kHz that sounds like converting the whole stream.

    `agent.audio.resample.resample` works on whole arrays; applied to 30 ms chunks it would
    leave a click at every seam, and it designs its filter on every call (about 1-4 ms), so
    audio is converted in blocks of `_RESAMPLE_BLOCK_S` with context on both sides, keeping
    only the middle, in whole units of (src/gcd) in -> (dst/gcd) out so the timeline never
    drifts. The price is that much latency and, at 44.1/48 kHz, about 1 % of an x86 core:
    on a Pi, capture at 16 kHz (ALSA's plug layer converts far more cheaply).
    """

    def __init__(self, src_rate: int, dst_rate: int = TARGET_RATE) -> None:
        from agent.audio.resample import resample  # only needed when rates differ

        self._resample = resample
        g = math.gcd(src_rate, dst_rate)
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self.src_unit, self.dst_unit = src_rate // g, dst_rate // g
        self.pad_units = max(1, math.ceil(_RESAMPLE_CONTEXT / self.src_unit))
        self.block_units = max(1, round(_RESAMPLE_BLOCK_S * src_rate / self.src_unit))
        self._buf = np.zeros(self.pad_units * self.src_unit, dtype=np.float32)  # left context

    def push(self, samples: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate((self._buf, samples.astype(np.float32)))
        units = len(self._buf) // self.src_unit
        if units < 2 * self.pad_units + self.block_units:
            return np.empty(0, dtype=np.int16)
        block = self._buf[:units * self.src_unit]
        out = self._resample(block / 32768.0, self.src_rate, self.dst_rate)
        keep = out[self.pad_units * self.dst_unit:(units - self.pad_units) * self.dst_unit]
        self._buf = self._buf[(units - 2 * self.pad_units) * self.src_unit:]
        return np.clip(np.round(keep * 32768.0), -32768, 32767).astype(np.int16)

    def finish(self) -> np.ndarray:
        """Convert what is held back for right context, padding the end with silence."""
        held = len(self._buf) - self.pad_units * self.src_unit
        pad = np.zeros((self.pad_units + self.block_units) * self.src_unit, dtype=np.int16)
        out = self.push(pad)
        return out[:max(0, round(held * self.dst_rate / self.src_rate))]


class RateConverting:
    """Exact 16 kHz frames on top of a `_read_raw` that delivers samples at the capture rate."""

    sample_rate = TARGET_RATE
    _resampler: StreamResampler | None = None
    _pending: np.ndarray = np.empty(0, dtype=np.int16)
    _ended = False

    def _read_raw(self, samples: int, timeout: float) -> np.ndarray | None:
        raise NotImplementedError

    def read(self, frame_samples: int, timeout: float) -> np.ndarray | None:
        if self._resampler is None:
            return self._read_raw(frame_samples, timeout)
        deadline = time.monotonic() + timeout
        raw_samples = math.ceil(frame_samples * self.sample_rate / TARGET_RATE)
        while len(self._pending) < frame_samples and not self._ended:
            try:
                raw = self._read_raw(raw_samples, max(0.0, deadline - time.monotonic()))
            except EndOfStream:
                self._ended = True
                self._pending = np.concatenate((self._pending, self._resampler.finish()))
                break
            if raw is None:
                return None
            self._pending = np.concatenate((self._pending, self._resampler.push(raw)))
        if len(self._pending) == 0:
            raise EndOfStream
        out, self._pending = self._pending[:frame_samples], self._pending[frame_samples:]
        return out
