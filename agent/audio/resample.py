"""Anti-aliased sample-rate conversion in pure numpy (no scipy on the Pi).

Why a polyphase windowed-sinc: speech engines want 16 kHz, microphones and phones deliver
8/22.05/44.1/48 kHz. Naive decimation folds everything above 8 kHz back into the speech
band; linear interpolation smears it. A Kaiser-windowed sinc with the cut-off just below the
lower Nyquist frequency removes that energy (>= 88 dB) while keeping speech untouched.

How it stays fast and small:

* The conversion ratio is reduced with gcd to L/M (44100 -> 16000 is 160/441). Output sample
  ``n`` sits at input time ``n*M/L``; only ``L`` distinct fractional phases exist, so the
  filter taps are computed once per phase, never per output sample.
* Outputs are processed in *frames* of ``L'`` consecutive samples (``L' = G*L``, with G chosen
  so a frame has at least ~32 outputs). Every frame consumes exactly ``M' = G*M`` inputs and
  uses the same taps, so for a group of up to 32 neighbouring outputs the whole computation is
  one dense matrix product ``windows (frames x span) @ taps (span x group)``: BLAS does the
  work, Python only loops over a handful of groups per block.
* Input is pulled through a ``read(start, stop)`` callback one block at a time, so a 30-minute
  48 kHz recording never needs more than a few MB of working memory beyond its output. The
  decoder uses this to convert straight from the raw file bytes.
* Ratios with a huge reduced ``L`` (44101 Hz: 16000/44101) would need up to L*taps
  coefficients; they use a table of a few hundred phases, linearly interpolated (error
  ~1e-5, below 16-bit resolution), and gathers. ~20x slower than the exact path, but bounded
  in memory and set-up time; no real recorder produces such rates.
* Plans are cached per rate pair, so a stream of 44.1 kHz files pays the set-up once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import ceil, gcd
from typing import Callable, Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

Reader = Callable[[int, int], np.ndarray]
"""``read(start, stop)`` returns float32 input samples ``start..stop-1`` (0 <= start < stop <= n)."""

# Filter design. CUTOFF is the -6 dB point as a fraction of the lower Nyquist frequency;
# HALF_WIDTH is the half-length in samples at the lower rate (49 taps at the lower rate).
# Measured for 48k/44.1k -> 16k: flat within 0.01 dB to 6.4 kHz, -3 dB at 7.0 kHz, -6 dB at
# 7.2 kHz, >= 88 dB down from 8.2 kHz on. Speech recognisers lose nothing above 7 kHz, while
# aliases of everything above 8.2 kHz land below the 16-bit noise floor.
CUTOFF = 0.90
HALF_WIDTH = 24
KAISER_BETA = 8.6

_GROUP = 32  # outputs per matrix-product column group: wide enough for BLAS, little zero padding
_BLOCK_INPUT = 1 << 16  # input samples per block: bounds working memory (~1 MB float32 per copy)
# Multiply-adds per matrix product. OpenBLAS runs products below 4*65536 on the calling
# thread; above it, it wakes its thread pool, whose spin-waiting made resampling 20x slower
# on a busy machine (a Pi running whisper.cpp on all cores is one). Small products also keep
# the window copy in L1/L2 cache, so they cost nothing in throughput.
_PRODUCT_MAX_WORK = 1 << 18
# The exact path precomputes taps for every one of the L' outputs of a frame. Past ~2048
# (only odd rates such as 44101 Hz get there) its set-up would cost more than it saves.
_FAST_PATH_MAX_OUTPUTS = 2048
_FAST_PATH_MAX_ENTRIES = 1 << 20  # float32 entries allowed for the precomputed tap matrices
_TABLE_MAX_ENTRIES = 1 << 18  # interpolated-phase table (1 MB), at most 1024 phases
_GATHER_MAX_ENTRIES = 1 << 18  # outputs x taps per block in the gather path


def output_length(n_in: int, src_rate: int, dst_rate: int) -> int:
    """Number of output samples for ``n_in`` inputs: ceil(n_in * dst / src), exact integers."""
    src_rate, dst_rate = _check_rates(src_rate, dst_rate)
    return -(-n_in * dst_rate // src_rate) if n_in > 0 else 0


def resample(x: np.ndarray, src_rate: int, dst_rate: int = 16000) -> np.ndarray:
    """Resample a 1-D signal from ``src_rate`` to ``dst_rate`` Hz; returns float32.

    The values are not rescaled (float32 in [-1, 1] stays in [-1, 1], give or take filter
    ripple). When the rates are equal the input is returned as float32 (no copy if it already
    is float32), since filtering would only cost time.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D array, got shape {x.shape}")
    src_rate, dst_rate = _check_rates(src_rate, dst_rate)
    if src_rate == dst_rate:
        return x.astype(np.float32, copy=False)
    out = np.empty(output_length(len(x), src_rate, dst_rate), dtype=np.float32)
    pos = 0
    for block in resample_blocks(_array_reader(x), len(x), src_rate, dst_rate):
        out[pos : pos + len(block)] = block
        pos += len(block)
    return out


def resample_blocks(read: Reader, n_in: int, src_rate: int, dst_rate: int) -> Iterator[np.ndarray]:
    """Yield consecutive float32 output blocks that together form the resampled signal.

    Streaming form of :func:`resample` for callers (the WAV decoder) that convert input on
    demand: ``read`` is asked for overlapping, increasing ranges, a block at a time.
    """
    src_rate, dst_rate = _check_rates(src_rate, dst_rate)
    n_out = output_length(n_in, src_rate, dst_rate)
    if n_out == 0:
        return
    if src_rate == dst_rate:
        for start in range(0, n_in, _BLOCK_INPUT):
            yield np.asarray(read(start, min(n_in, start + _BLOCK_INPUT)), dtype=np.float32)
        return
    yield from _plan(src_rate, dst_rate).run(read, n_in, n_out)


def _check_rates(src_rate: int, dst_rate: int) -> tuple[int, int]:
    if int(src_rate) != src_rate or int(dst_rate) != dst_rate or src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive integers, got {src_rate} -> {dst_rate}")
    return int(src_rate), int(dst_rate)


@lru_cache(maxsize=8)
def _plan(src_rate: int, dst_rate: int) -> _Polyphase | _Interpolated:
    """The exact polyphase plan when its tables are small, else the interpolated one."""
    design = _Design.make(src_rate, dst_rate)
    return _Polyphase.make(design) or _Interpolated.make(design)


def _array_reader(x: np.ndarray) -> Reader:
    """Reader over an in-memory array; converts only the requested block to float32."""

    def read(start: int, stop: int) -> np.ndarray:
        return x[start:stop].astype(np.float32, copy=False)

    return read


def _read_padded(read: Reader, n_in: int, start: int, stop: int) -> np.ndarray:
    """Input ``start..stop-1`` as float32, zeros outside ``0..n_in-1`` (the signal's silence)."""
    buf = np.zeros(stop - start, dtype=np.float32)
    lo, hi = max(start, 0), min(stop, n_in)
    if lo < hi:
        buf[lo - start : hi - start] = read(lo, hi)
    return buf


@dataclass(frozen=True)
class _Design:
    """Filter shared by both strategies: rates reduced to L/M and the kernel's extent."""

    up: int  # L
    down: int  # M
    scale: float  # sinc bandwidth in cycles per input sample x 2
    half_width: float  # kernel half length W in input samples
    reach: int  # ceil(W): taps span offsets -reach..reach around floor(t)

    @classmethod
    def make(cls, src_rate: int, dst_rate: int) -> _Design:
        g = gcd(src_rate, dst_rate)
        up, down = dst_rate // g, src_rate // g
        ratio = min(1.0, up / down)
        half_width = HALF_WIDTH / ratio
        return cls(up, down, CUTOFF * ratio, half_width, int(ceil(half_width)))

    @property
    def taps(self) -> int:
        return 2 * self.reach + 1

    def kernel(self, frac: np.ndarray) -> np.ndarray:
        """Normalised taps (rows) for fractional input positions ``frac`` in [0, 1].

        Each row sums to exactly 1 so a constant signal comes out unchanged at every phase
        (an unnormalised windowed sinc leaves a faint phase-dependent DC ripple).
        """
        d = np.arange(-self.reach, self.reach + 1, dtype=np.float64)
        t = np.asarray(frac, dtype=np.float64)[:, None] - d[None, :]
        u2 = np.clip(1.0 - (t / self.half_width) ** 2, 0.0, None)
        window = np.i0(KAISER_BETA * np.sqrt(u2)) / np.i0(KAISER_BETA)
        window[u2 <= 0.0] = 0.0
        taps = self.scale * np.sinc(self.scale * t) * window
        taps /= taps.sum(axis=1, keepdims=True)
        return taps


@dataclass(frozen=True)
class _Group:
    """Up to _GROUP consecutive outputs of a frame and the input window they share."""

    first: int  # first output index within the frame
    offset: int  # window start relative to the frame's first input sample
    matrix: np.ndarray  # (span, outputs) float32 taps, zero outside each output's reach


@dataclass(frozen=True)
class _Polyphase:
    """Exact polyphase plan: one tap matrix per output group, reused for every frame."""

    frame_out: int  # L' outputs per frame
    frame_in: int  # M' inputs per frame
    groups: tuple[_Group, ...]

    @classmethod
    def make(cls, design: _Design) -> _Polyphase | None:
        """Build the plan, or None when the tap matrices would be too big (huge reduced L)."""
        repeat = max(1, -(-_GROUP // design.up))
        frame_out, frame_in = design.up * repeat, design.down * repeat
        span_estimate = _GROUP * frame_in / frame_out + design.taps
        if frame_out > _FAST_PATH_MAX_OUTPUTS or frame_out * span_estimate > _FAST_PATH_MAX_ENTRIES:
            return None
        groups = []
        for first in range(0, frame_out, _GROUP):
            r = np.arange(first, min(first + _GROUP, frame_out), dtype=np.int64)
            base = (r * frame_in) // frame_out  # floor of each output's input time
            frac = ((r * frame_in) % frame_out) / frame_out
            taps = design.kernel(frac).astype(np.float32)
            offset = int(base[0]) - design.reach
            span = int(base[-1]) + design.reach - offset + 1
            matrix = np.zeros((span, len(r)), dtype=np.float32)
            rows = (base - base[0])[:, None] + np.arange(design.taps)[None, :]
            matrix[rows, np.arange(len(r))[:, None]] = taps
            groups.append(_Group(first, offset, matrix))
        return cls(frame_out, frame_in, tuple(groups))

    def run(self, read: Reader, n_in: int, n_out: int) -> Iterator[np.ndarray]:
        n_frames = -(-n_out // self.frame_out)
        per_block = max(1, _BLOCK_INPUT // self.frame_in)
        widest = max(g.matrix.size for g in self.groups)
        per_product = max(1, _PRODUCT_MAX_WORK // widest)
        lo_off = min(g.offset for g in self.groups)
        hi_off = max(g.offset + g.matrix.shape[0] for g in self.groups)
        emitted = 0
        for m0 in range(0, n_frames, per_block):
            frames = min(per_block, n_frames - m0)
            start = m0 * self.frame_in + lo_off
            stop = (m0 + frames - 1) * self.frame_in + hi_off
            buf = _read_padded(read, n_in, start, stop)
            out = np.empty((frames, self.frame_out), dtype=np.float32)
            for s0 in range(0, frames, per_product):
                rows = min(per_product, frames - s0)
                for group in self.groups:
                    offset = group.offset - lo_off + s0 * self.frame_in
                    window = self._windows(buf, offset, rows, group.matrix.shape[0])
                    cols = slice(group.first, group.first + group.matrix.shape[1])
                    out[s0 : s0 + rows, cols] = window @ group.matrix
            flat = out.reshape(-1)[: n_out - emitted]
            emitted += len(flat)
            yield flat

    def _windows(self, buf: np.ndarray, offset: int, frames: int, span: int) -> np.ndarray:
        """Rows ``buf[offset + m*M' : ... + span]`` as a matrix BLAS accepts.

        A strided view when the rows do not overlap (BLAS takes any row stride >= width);
        otherwise one contiguous copy, because numpy's matmul falls back to a slow
        non-BLAS loop for overlapping views.
        """
        item = buf.itemsize
        view = as_strided(buf[offset:], shape=(frames, span), strides=(self.frame_in * item, item))
        return view if self.frame_in >= span else np.ascontiguousarray(view)


@dataclass(frozen=True)
class _Interpolated:
    """Fallback for ratios whose reduced L is huge: taps interpolated from a phase table.

    Linear interpolation between neighbouring phases keeps the error quadratic in the phase
    step (~1e-5 with 256 phases), so a small table replaces L exact rows.
    """

    design: _Design
    phases: int
    table: np.ndarray  # (phases + 1, taps) float32: phase positions 0, 1/P, ..., 1

    @classmethod
    def make(cls, design: _Design) -> _Interpolated:
        phases = max(64, min(1024, _TABLE_MAX_ENTRIES // design.taps))
        table = design.kernel(np.arange(phases + 1) / phases).astype(np.float32)
        return cls(design, phases, table)

    def run(self, read: Reader, n_in: int, n_out: int) -> Iterator[np.ndarray]:
        up, down, reach = self.design.up, self.design.down, self.design.reach
        per_block = max(1, min(_GATHER_MAX_ENTRIES // self.design.taps, _BLOCK_INPUT * up // down))
        offsets = np.arange(self.design.taps, dtype=np.int64)
        for n0 in range(0, n_out, per_block):
            n = np.arange(n0, min(n_out, n0 + per_block), dtype=np.int64)
            base = (n * down) // up
            start = int(base[0]) - reach
            buf = _read_padded(read, n_in, start, int(base[-1]) + reach + 1)
            windows = buf[(base - base[0])[:, None] + offsets[None, :]]
            yield np.einsum("ij,ij->i", windows, self._taps(n))

    def _taps(self, n: np.ndarray) -> np.ndarray:
        """Rows of taps for outputs ``n``, interpolated between the two nearest phases."""
        up, down = self.design.up, self.design.down
        position = ((n * down) % up) * (self.phases / up)
        q = position.astype(np.int64)
        weight = (position - q).astype(np.float32)[:, None]
        lower = self.table[q]
        return lower + weight * (self.table[q + 1] - lower)
