"""RIFF/RF64 WAVE parsing: walk the chunks to find fmt and data, and read the raw samples.

Why a parser of our own rather than the stdlib `wave` module: it rejects 32-bit float and
WAVE_FORMAT_EXTENSIBLE files, which phones and DAWs produce all the time, and it cannot tell
"corrupt" from "unsupported". Sizes always come from the real file length, so a lying header
cannot make us allocate or loop absurdly, and the data chunk is read with one read into one
preallocated buffer. `agent.audio.wav` is the public entry point.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Union

import numpy as np

from agent.audio.info import MAX_RATE, MIN_RATE, WavInfo, corrupt, unsupported
from agent.audio.pcm import downmix
from agent.audio.resample import Reader

WAVE_FORMAT_PCM = 0x0001

_MAX_CHUNKS = 1024  # real files have < 10 chunks; bounds the walk over hostile input
_STREAMING_SIZE = 0xFFFFFFFF  # data size left by streaming writers (and RF64 placeholder)
_FLOAT, _ALAW, _MULAW, _EXTENSIBLE = 0x0003, 0x0006, 0x0007, 0xFFFE
_GUID_TAIL = bytes.fromhex("0000 1000 8000 00aa 0038 9b71")  # KSDATAFORMAT_SUBTYPE_* after the tag

_TAG_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MP3",
    0x0161: "Windows Media Audio",
    0x1610: "AAC",
    0xF1AC: "FLAC",
}


# --------------------------------------------------------------------------- byte sources


class BytesSource:
    """Random access over in-memory file contents."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]

    def samples(self, offset: int, n: int) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.uint8, count=n, offset=offset)


class FileSource:
    """Random access over an open file: small seeks+reads for the header, one read for data."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def read(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)

    def samples(self, offset: int, n: int) -> np.ndarray:
        """The data chunk in one preallocated buffer (readinto loops only on short reads)."""
        buf = np.empty(n, dtype=np.uint8)
        view = memoryview(buf)
        self.f.seek(offset)
        got = 0
        while got < n:
            k = self.f.readinto(view[got:])
            if not k:
                raise corrupt(f"the file ended after {offset + got:,} bytes while its samples were read")
            got += k
        return buf


Source = Union[BytesSource, FileSource]


# --------------------------------------------------------------------------- WAV header


@dataclass(frozen=True)
class Fmt:
    """The decoded fmt chunk (EXTENSIBLE already resolved to its sub-format)."""

    kind: str  # "pcm" | "float" | "alaw" | "mulaw"
    channels: int
    sample_rate: int
    bits: int
    sample_bytes: int


@dataclass(frozen=True)
class Layout:
    """Where the whole frames of a WAV are and how to read them."""

    info: WavInfo
    fmt: Fmt
    data_offset: int
    data_bytes: int  # whole frames only
    exact: bool  # sizes in the header are true, the file is a plain RIFF: safe to share as-is


def parse_wav(source: Source) -> Layout:
    """Walk the RIFF chunks (word-aligned, unknown ones skipped) to find fmt and data."""
    riff = source.read(0, 4) == b"RIFF"
    fmt: Fmt | None = None
    data: tuple[int, int, bool] | None = None  # (offset, bytes, exact)
    ds64_data: int | None = None
    offset = 12
    for _ in range(_MAX_CHUNKS):
        header = source.read(offset, 8)
        if len(header) < 8:
            break
        cid, size = struct.unpack("<4sI", header)
        body = offset + 8
        if cid == b"fmt " and fmt is None:
            fmt = _parse_fmt(source, body, size)
        elif cid == b"ds64" and not riff:
            ds64_data = _parse_ds64(source, body, size)
        elif cid == b"data" and data is None:
            data = _data_extent(source, body, size, ds64_data)
            if not data[2]:
                break  # runs to the end of the file: nothing can follow
        elif body + size > source.size and (fmt is None or data is None):
            name = cid.decode("latin-1")
            raise corrupt(f"chunk {name!r} claims {size:,} bytes but the file ends after {source.size:,}")
        if fmt is not None and data is not None:
            break
        offset = body + size + (size & 1)
    else:
        raise corrupt(f"more than {_MAX_CHUNKS} chunks without finding both fmt and data")
    if fmt is None:
        raise corrupt(f"the WAV header is truncated or invalid: no fmt chunk in {source.size:,} bytes")
    if data is None:
        raise corrupt(f"no data chunk in {source.size:,} bytes: the WAV is truncated or invalid")
    block = fmt.channels * fmt.sample_bytes
    frames = data[1] // block
    info = WavInfo(fmt.kind, fmt.sample_rate, fmt.channels, fmt.bits, frames)
    return Layout(info, fmt, data[0], frames * block, data[2] and riff)


def _parse_fmt(source: Source, body: int, size: int) -> Fmt:
    if body + size > source.size:
        raise corrupt(f"fmt chunk claims {size:,} bytes but the file ends after {source.size:,}")
    if size < 16:
        raise corrupt(f"fmt chunk is {size} bytes, shorter than the 16 every WAV needs")
    raw = source.read(body, min(size, 40))
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", raw)
    if channels == 0:
        raise corrupt("the fmt chunk says the audio has 0 channels")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise corrupt(f"sample rate {rate:,} Hz is outside the supported {MIN_RATE:,}..{MAX_RATE:,} Hz")
    if tag == _EXTENSIBLE:
        tag = _extensible_subformat(raw, size)
    kind, sample_bytes = _sample_layout(tag, bits)
    if block_align != channels * sample_bytes:
        raise corrupt(
            f"block align {block_align} does not match {channels} channel(s) x {sample_bytes} bytes per sample"
        )
    return Fmt(kind, channels, rate, bits, sample_bytes)


def _extensible_subformat(raw: bytes, size: int) -> int:
    """The format tag inside a WAVE_FORMAT_EXTENSIBLE sub-format GUID."""
    if size < 40:
        raise corrupt(f"WAVE_FORMAT_EXTENSIBLE fmt chunk is {size} bytes; it needs 40")
    guid = raw[24:40]
    tag, high = struct.unpack_from("<HH", guid)
    if high != 0 or guid[4:] != _GUID_TAIL:
        raise unsupported(f"WAVE_FORMAT_EXTENSIBLE sub-format {guid.hex()} is not PCM or float")
    return tag


def _sample_layout(tag: int, bits: int) -> tuple[str, int]:
    """("pcm" | "float" | "alaw" | "mulaw", bytes per sample) for the encodings we decode."""
    if tag == WAVE_FORMAT_PCM:
        if bits == 0:
            raise corrupt("the fmt chunk says 0 bits per sample")
        if bits > 32:
            raise unsupported(f"{bits}-bit integer PCM is not supported (8, 16, 24 and 32-bit are)")
        return "pcm", (bits + 7) // 8  # e.g. 12-bit samples sit left-justified in 2 bytes
    if tag == _FLOAT:
        if bits not in (32, 64):
            raise unsupported(f"{bits}-bit float WAV is not supported (32 and 64-bit are)")
        return "float", bits // 8
    if tag in (_ALAW, _MULAW):  # G.711: telephony and voicemail, usually 8 kHz
        if bits != 8:
            raise corrupt(f"G.711 {_TAG_NAMES[tag]} has 8 bits per sample; the fmt chunk says {bits}")
        return ("alaw" if tag == _ALAW else "mulaw"), 1
    name = _TAG_NAMES.get(tag, "an unknown encoding")
    raise unsupported(f"this WAV uses {name} (format tag 0x{tag:04X}); convert it to PCM or float WAV")


def _parse_ds64(source: Source, body: int, size: int) -> int:
    """RF64/BW64: the real 64-bit data size that the data chunk's 0xFFFFFFFF stands for."""
    raw = source.read(body, 24)
    if size < 24 or len(raw) < 24:
        raise corrupt("the RF64 ds64 chunk is truncated")
    return int(struct.unpack_from("<Q", raw, 8)[0])


def _data_extent(source: Source, body: int, size: int, ds64: int | None) -> tuple[int, int, bool]:
    """(offset, bytes, exact) of the samples, trusting the header only where the file agrees.

    Streaming writers that never came back to patch the header leave 0xFFFFFFFF or 0: then
    the samples run to the end of the file. A size that claims more than the file holds is
    a truncated file: corrupt.
    """
    available = source.size - body
    if size == _STREAMING_SIZE and ds64 is not None:
        size = ds64
    elif size == _STREAMING_SIZE or (size == 0 and available > 0 and not _looks_like_chunk(source, body)):
        return body, available, False
    if size > available:
        raise corrupt(
            f"data chunk claims {size:,} bytes but only {available:,} follow it "
            f"(the file ends after {source.size:,} bytes)"
        )
    return body, size, True


def _looks_like_chunk(source: Source, offset: int) -> bool:
    """Whether bytes after an empty data chunk are another chunk rather than unsized samples."""
    header = source.read(offset, 8)
    if len(header) < 8 or not all(0x20 <= b < 0x7F for b in header[:4]):
        return False
    return offset + 8 + struct.unpack_from("<I", header, 4)[0] <= source.size


# --------------------------------------------------------------------------- WAV samples


def frame_reader(raw: np.ndarray, fmt: Fmt) -> Reader:
    """Reader giving mono float32 in [-1, 1] for frames start..stop-1 of the raw data."""
    block = fmt.channels * fmt.sample_bytes

    def read(start: int, stop: int) -> np.ndarray:
        return downmix(_to_float(raw[start * block : stop * block], fmt), fmt.channels)

    return read


def _to_float(chunk: np.ndarray, fmt: Fmt) -> np.ndarray:
    """Interleaved samples as float32 in [-1, 1], vectorised for every sample width."""
    if fmt.kind in _G711:
        return _G711[fmt.kind][chunk]
    if fmt.kind == "float":
        x = np.clip(chunk.view("<f4" if fmt.sample_bytes == 4 else "<f8"), -1.0, 1.0)
        return np.nan_to_num(x.astype(np.float32, copy=False), copy=False)
    if fmt.sample_bytes == 1:  # 8-bit WAV is unsigned, centred on 128
        return (chunk.astype(np.float32) - 128.0) * np.float32(1 / 128)
    if fmt.sample_bytes == 2:
        return chunk.view("<i2").astype(np.float32) * np.float32(1 / 32768)
    if fmt.sample_bytes == 3:
        # Put each 3-byte sample in the top of an int32: sign comes for free, scale is 2**31.
        wide = np.zeros((len(chunk) // 3, 4), dtype=np.uint8)
        wide[:, 1:] = chunk.reshape(-1, 3)
        return wide.view("<i4").ravel().astype(np.float32) * np.float32(2.0**-31)
    return chunk.view("<i4").astype(np.float32) * np.float32(2.0**-31)


def _mulaw_table() -> np.ndarray:
    """The 256 G.711 µ-law code words as float32 (ITU-T G.711: bits inverted, bias 0x84)."""
    u = ~np.arange(256, dtype=np.uint8)
    exponent, mantissa = (u >> 4) & 7, (u & 0x0F).astype(np.int32)
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(u & 0x80, -magnitude, magnitude) / 32768).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """The 256 G.711 A-law code words as float32 (ITU-T G.711: even bits inverted, sign bit set = positive)."""
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    exponent, mantissa = ((a >> 4) & 7).astype(np.int32), (a & 0x0F).astype(np.int32)
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return (np.where(a & 0x80, magnitude, -magnitude) / 32768).astype(np.float32)


_G711 = {"alaw": _alaw_table(), "mulaw": _mulaw_table()}  # 1 KB each: a lookup per byte decodes G.711
