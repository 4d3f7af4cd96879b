"""Decode audio files into 16 kHz mono int16, and write 16-bit WAVs safely.

Why not the stdlib `wave` module: it rejects 32-bit float and WAVE_FORMAT_EXTENSIBLE files,
which phones and DAWs produce all the time, and it cannot tell "corrupt" from "unsupported".
Every rejection here is an `AudioError` whose `code` (empty, corrupt, unsupported_format,
too_long, too_large) is part of the public MQTT API, with a message a person can act on.

Memory and CPU matter on a Pi Zero 2W, so:

* limits are checked before any sample is read (file size from stat, duration from header, and
  the memory the decoded 16 kHz samples need against what the memory budget has free);
* the data chunk is read with one read into one preallocated buffer, and sizes always come
  from the real file length, so a lying header cannot make us allocate or loop absurdly;
* conversion, downmix and resampling run block by block straight from the raw bytes into
  the preallocated int16 output, so there is never a float copy of the whole recording;
* a file that is already 16 kHz mono 16-bit PCM is returned as a view of the read buffer,
  and its path is passed on so command-line engines can read the file itself.

FLAC, OGG, MP3 and friends go through the optional `soundfile` package
(``pip install voice-agent[formats]``), imported only when such a file shows up.

This module is the public API; the work is split by job: `agent.audio.info` (header summary
and limit checks), `agent.audio.riff` (WAV chunks and raw samples), `agent.audio.containers`
(sniffing and the soundfile path) and `agent.audio.pcm` (downmix, int16, resampling).
"""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from agent.audio.containers import FORMATS_EXTRA, decode_other, probe_other, sniff
from agent.audio.info import MAX_RATE, MIN_RATE, WavInfo, check_decoded, check_duration, check_size, nonempty
from agent.audio.pcm import float_to_int16, render
from agent.audio.riff import WAVE_FORMAT_PCM, BytesSource, FileSource, Source, frame_reader, parse_wav
from agent.audio.clip import SAMPLE_RATE, Audio
from agent.durable import write_atomically
from agent.memory_budget import BudgetReader
from agent.errors import AudioError

__all__ = [
    "FORMATS_EXTRA",
    "MAX_RATE",
    "MIN_RATE",
    "BytesLike",
    "WavInfo",
    "decode_bytes",
    "decode_file",
    "decode_open",
    "encode_wav",
    "is_native",
    "probe",
    "write_wav",
]

BytesLike = Union[bytes, bytearray, memoryview]

# The byte sources lived here before the split; tests still patch them under these names.
_BytesSource, _FileSource = BytesSource, FileSource


def is_native(info: WavInfo) -> bool:
    """True for 16 kHz mono 16-bit PCM: the samples can be used (and the file shared) as-is."""
    return info.format == "pcm" and info.sample_rate == SAMPLE_RATE and info.channels == 1 and info.bits == 16


def probe(path: Path) -> WavInfo:
    """Read only the header: format, rate, channels, bits, frames.

    Raises the same header-level errors as `decode_file` (empty, corrupt, unsupported_format);
    limits are not checked because none are given. OSError if the file cannot be opened.
    """
    path = Path(path)
    size = _regular_file_size(path)
    if size == 0:
        raise AudioError("the file is empty (0 bytes)", code="empty")
    with open(path, "rb") as f:
        source = FileSource(f)
        kind = sniff(source.read(0, 12))
        if kind != "wav":
            return probe_other(str(path), kind)
        return nonempty(parse_wav(source).info)


def decode_file(
    path: Path,
    *,
    max_bytes: int | None = None,
    max_duration_s: float | None = None,
    available_bytes: int | None = None,
) -> Audio:
    """Decode a file to 16 kHz mono int16.

    `Audio.path` is set only when the file already is a clean 16 kHz mono 16-bit PCM RIFF WAV,
    i.e. other programs may read it instead of the returned samples. Raises AudioError
    (empty, corrupt, unsupported_format, too_long, too_large, forbidden: not a regular file);
    OSError if it cannot be opened. `available_bytes` is the memory the decoded audio may take
    (None: what the memory budget has free now); audio that would need more is refused as
    too_large before it is decoded.
    """
    path = Path(path)
    check_size(_regular_file_size(path), max_bytes)
    with open(path, "rb") as f:
        return decode_open(f, path, max_bytes=max_bytes, max_duration_s=max_duration_s,
                           available_bytes=available_bytes)


def decode_open(f: BinaryIO, path: Path | None, *, max_bytes: int | None = None,
                max_duration_s: float | None = None, available_bytes: int | None = None) -> Audio:
    """`decode_file` of a regular file its caller has opened (and checked) itself: the inbox opens
    each file once without following a symlink and hashes what is read here. `path` names the
    file for engines that may read a clean WAV themselves (None: they never do)."""
    source = FileSource(f)
    check_size(source.size, max_bytes)  # the file may have grown since stat
    if source.size == 0:
        raise AudioError("the file is empty (0 bytes)", code="empty")
    kind = sniff(source.read(0, 12))
    if kind == "wav":
        return _decode_wav(source, path, max_duration_s, _available(available_bytes))
    f.seek(0)
    return decode_other(f, kind, max_duration_s, _available(available_bytes))


def decode_bytes(
    data: BytesLike,
    *,
    max_bytes: int | None = None,
    max_duration_s: float | None = None,
    available_bytes: int | None = None,
) -> Audio:
    """Decode in-memory file contents (an HTTP upload, an MQTT payload) to 16 kHz mono int16.

    Native 16 kHz mono 16-bit input is returned as a view of `data` when it is immutable
    bytes (no copy); mutable buffers are copied first so later writes cannot change the result.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    check_size(len(data), max_bytes)
    if not data:
        raise AudioError("the audio is empty (0 bytes)", code="empty")
    source = BytesSource(data)
    kind = sniff(source.read(0, 12))
    if kind == "wav":
        return _decode_wav(source, None, max_duration_s, _available(available_bytes))
    return decode_other(io.BytesIO(data), kind, max_duration_s, _available(available_bytes))


def encode_wav(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A complete 16-bit mono PCM WAV file in memory (whisper.cpp stdin, HTTP uploads, spool).

    int16 samples are written as they are; float samples are clipped to [-1, 1] and scaled.
    Built with a single join of header and sample buffer, so the samples are copied once.
    """
    pcm = _as_int16(samples)
    return b"".join((_wav_header(len(pcm), sample_rate), memoryview(pcm).cast("B")))


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a 16-bit mono WAV atomically: readers see the old file or the whole new one.

    The temp file lives in the target directory (os.replace must not cross filesystems), is
    hidden and ends in ".tmp" so inbox watchers ignore it, and is fsynced before the rename
    (and the directory after it) so a power cut on the Pi cannot leave a truncated spool file.
    Created with mode 0600 because recordings of voices are private.
    """
    path = Path(path)
    pcm = _as_int16(samples)
    header = _wav_header(len(pcm), sample_rate)
    write_atomically(path, [header, memoryview(pcm).cast("B")])


# --------------------------------------------------------------------------- reading


def _regular_file_size(path: Path) -> int:
    """Size from stat; refuses FIFOs and devices, whose open() or read() could block forever."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{path.name} is not a regular file", code="forbidden")
    return st.st_size


def _available(available_bytes: int | None) -> int:
    """The memory decoded audio may take: as given, or what the budget (machine or cgroup) has free."""
    return BudgetReader().read().available_bytes if available_bytes is None else available_bytes


def _decode_wav(source: Source, path: Path | None, max_duration_s: float | None, available_bytes: int) -> Audio:
    layout = parse_wav(source)
    info = nonempty(layout.info)
    check_duration(info, max_duration_s)
    check_decoded(info, available_bytes, 0 if is_native(info) else layout.data_bytes)
    raw = source.samples(layout.data_offset, layout.data_bytes)
    if is_native(info):
        samples = raw.view("<i2").astype(np.int16, copy=False)
        return Audio(samples, path if layout.exact else None)
    return Audio(render(frame_reader(raw, layout.fmt), info.frames, info.sample_rate))


# --------------------------------------------------------------------------- writing


def _as_int16(samples: np.ndarray) -> np.ndarray:
    """Mono samples as contiguous little-endian int16 (float is clipped and scaled)."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {x.shape}")
    if x.dtype.kind == "f":
        x = float_to_int16(np.clip(x, -1.0, 1.0))
    elif x.dtype.kind in "iu" and x.dtype != np.int16:
        if x.size and (x.min() < -32768 or x.max() > 32767):
            raise ValueError("integer samples exceed the int16 range")
    elif x.dtype != np.int16:
        raise ValueError(f"samples must be int16 or float, got {x.dtype}")
    return np.ascontiguousarray(x, dtype="<i2")


def _wav_header(frames: int, sample_rate: int) -> bytes:
    if int(sample_rate) != sample_rate or not 1 <= sample_rate <= MAX_RATE:
        raise ValueError(f"sample rate must be an integer in 1..{MAX_RATE}, got {sample_rate}")
    data_bytes = 2 * frames
    if data_bytes > 0xFFFFFFFF - 36:
        raise ValueError(f"{frames:,} samples do not fit in a WAV file (4 GiB limit)")
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE",
        b"fmt ", 16, WAVE_FORMAT_PCM, 1, int(sample_rate), 2 * int(sample_rate), 2, 16,
        b"data", data_bytes,
    )  # fmt: skip
