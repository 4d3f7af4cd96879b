"""Decode audio files into 16 kHz mono int16, and write 16-bit WAVs safely.

Why not the stdlib `wave` module: it rejects 32-bit float and WAVE_FORMAT_EXTENSIBLE files,
which phones and DAWs produce all the time, and it cannot tell "corrupt" from "unsupported".
Every rejection here is an `AudioError` whose `code` (empty, corrupt, unsupported_format,
too_long, too_large) is part of the public MQTT API, with a message a person can act on.

Memory and CPU matter on a Pi Zero 2W, so:

* limits are checked before any sample is read (file size from stat, duration from header);
* the data chunk is read with one read into one preallocated buffer, and sizes always come
  from the real file length, so a lying header cannot make us allocate or loop absurdly;
* conversion, downmix and resampling run block by block straight from the raw bytes into
  the preallocated int16 output, so there is never a float copy of the whole recording;
* a file that is already 16 kHz mono 16-bit PCM is returned as a view of the read buffer,
  and its path is passed on so command-line engines can read the file itself.

FLAC, OGG, MP3 and friends go through the optional `soundfile` package
(``pip install voice-agent[formats]``), imported only when such a file shows up.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from agent.audio.resample import Reader, output_length, resample_blocks
from agent.engines.base import SAMPLE_RATE, Audio
from agent.errors import AudioError

MIN_RATE = 1000
MAX_RATE = 384_000
FORMATS_EXTRA = "pip install voice-agent[formats]"

_MAX_CHUNKS = 1024  # real files have < 10 chunks; bounds the walk over hostile input
_STREAMING_SIZE = 0xFFFFFFFF  # data size left by streaming writers (and RF64 placeholder)
_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_GUID_TAIL = bytes.fromhex("0000 1000 8000 00aa 0038 9b71")  # KSDATAFORMAT_SUBTYPE_* after the tag
_SOUNDFILE_BLOCK = 1 << 16  # frames per soundfile read

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

BytesLike = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class WavInfo:
    """What the header says: enough to check limits and pick a decode path without reading samples.

    `format` is "pcm" or "float" for WAV (including WAVE_FORMAT_EXTENSIBLE), otherwise the
    container name ("flac", "ogg", "mp3", ...). `bits` is the container sample size, 0 for
    lossy codecs that have none.
    """

    format: str
    sample_rate: int
    channels: int
    bits: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


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
        source = _FileSource(f)
        kind = _sniff(source.read(0, 12))
        if kind != "wav":
            return _probe_other(str(path), kind)
        return _nonempty(_parse_wav(source).info)


def decode_file(path: Path, *, max_bytes: int | None = None, max_duration_s: float | None = None) -> Audio:
    """Decode a file to 16 kHz mono int16.

    `Audio.path` is set only when the file already is a clean 16 kHz mono 16-bit PCM RIFF WAV,
    i.e. other programs may read it instead of the returned samples. Raises AudioError
    (empty, corrupt, unsupported_format, too_long, too_large); OSError if it cannot be opened.
    """
    path = Path(path)
    _check_size(_regular_file_size(path), max_bytes)
    with open(path, "rb") as f:
        source = _FileSource(f)
        _check_size(source.size, max_bytes)  # the file may have grown since stat
        if source.size == 0:
            raise AudioError("the file is empty (0 bytes)", code="empty")
        kind = _sniff(source.read(0, 12))
        if kind == "wav":
            return _decode_wav(source, path, max_duration_s)
    return _decode_other(str(path), kind, max_duration_s)


def decode_bytes(
    data: BytesLike, *, max_bytes: int | None = None, max_duration_s: float | None = None
) -> Audio:
    """Decode in-memory file contents (an HTTP upload, an MQTT payload) to 16 kHz mono int16.

    Native 16 kHz mono 16-bit input is returned as a view of `data` when it is immutable
    bytes (no copy); mutable buffers are copied first so later writes cannot change the result.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    _check_size(len(data), max_bytes)
    if not data:
        raise AudioError("the audio is empty (0 bytes)", code="empty")
    source = _BytesSource(data)
    kind = _sniff(source.read(0, 12))
    if kind == "wav":
        return _decode_wav(source, None, max_duration_s)
    return _decode_other(io.BytesIO(data), kind, max_duration_s)


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(memoryview(pcm).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- limits, checks


def _regular_file_size(path: Path) -> int:
    """Size from stat; refuses FIFOs and devices, whose open() or read() could block forever."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{path.name} is not a regular file", code="corrupt")
    return st.st_size


def _check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise AudioError(f"the file is {size:,} bytes; the limit is {max_bytes:,} bytes", code="too_large")


def _check_duration(info: WavInfo, max_duration_s: float | None) -> None:
    if max_duration_s is not None and info.duration_s > max_duration_s:
        raise AudioError(
            f"the audio is {info.duration_s:.1f} s long; the limit is {max_duration_s:g} s", code="too_long"
        )


def _nonempty(info: WavInfo) -> WavInfo:
    if info.frames <= 0:
        raise AudioError("the file has a valid header but contains no audio frames", code="empty")
    return info


def _corrupt(message: str) -> AudioError:
    return AudioError(message, code="corrupt")


def _unsupported(message: str) -> AudioError:
    return AudioError(message, code="unsupported_format")


# --------------------------------------------------------------------------- byte sources


class _BytesSource:
    """Random access over in-memory file contents."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]

    def samples(self, offset: int, n: int) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.uint8, count=n, offset=offset)


class _FileSource:
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
                raise _corrupt(f"the file ended after {offset + got:,} bytes while its samples were read")
            got += k
        return buf


_Source = Union[_BytesSource, _FileSource]


# --------------------------------------------------------------------------- container sniffing


def _sniff(head: bytes) -> str:
    """Container kind from the magic bytes: "wav", a soundfile kind, or an AudioError."""
    if len(head) < 4:
        raise _corrupt(f"the file is only {len(head)} bytes, too short to be audio")
    magic = head[:4]
    if magic in (b"RIFF", b"RF64", b"BW64"):
        return _riff_form(head)
    if magic in (b"RIFX", b"FFIR"):
        raise _unsupported("big-endian (RIFX) WAV files are not supported; convert to a standard WAV")
    other = _other_container(head)
    if other in ("mp4", "webm"):
        raise _unsupported(f"{other.upper()} audio is not supported; convert it to WAV, FLAC, OGG or MP3")
    if other:
        return other
    raise _corrupt(f"not a WAV file: it starts with {head[:4]!r} instead of b'RIFF'")


def _riff_form(head: bytes) -> str:
    if len(head) < 12:
        raise _corrupt(f"the WAV header is truncated: the file is only {len(head)} bytes")
    form = head[8:12]
    if form == b"WAVE":
        return "wav"
    if all(0x20 <= b < 0x7F for b in form):
        raise _unsupported(f"this RIFF file holds {form.decode('ascii')!r}, not WAVE audio")
    raise _corrupt(f"RIFF header without the WAVE form type (found {form!r})")


def _other_container(head: bytes) -> str | None:
    """Known non-WAV containers; None for unknown bytes."""
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3") or _is_mpeg_frame(head):
        return "mp3"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head.startswith(b".snd"):
        return "au"
    if head.startswith(b"caff"):
        return "caf"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    return None


def _is_mpeg_frame(head: bytes) -> bool:
    """An MPEG audio frame header (0xFFE sync plus valid version/layer/bitrate/rate fields).

    Checking the fields, not only the sync bits, keeps random bytes that happen to start
    with 0xFF 0xEx classified as corrupt rather than as MP3.
    """
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 0xF and rate != 3


# --------------------------------------------------------------------------- WAV header


@dataclass(frozen=True)
class _Fmt:
    """The decoded fmt chunk (EXTENSIBLE already resolved to its sub-format)."""

    kind: str  # "pcm" | "float"
    channels: int
    sample_rate: int
    bits: int
    sample_bytes: int


@dataclass(frozen=True)
class _Layout:
    """Where the whole frames of a WAV are and how to read them."""

    info: WavInfo
    fmt: _Fmt
    data_offset: int
    data_bytes: int  # whole frames only
    exact: bool  # sizes in the header are true, the file is a plain RIFF: safe to share as-is


def _parse_wav(source: _Source) -> _Layout:
    """Walk the RIFF chunks (word-aligned, unknown ones skipped) to find fmt and data."""
    riff = source.read(0, 4) == b"RIFF"
    fmt: _Fmt | None = None
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
            raise _corrupt(f"chunk {name!r} claims {size:,} bytes but the file ends after {source.size:,}")
        if fmt is not None and data is not None:
            break
        offset = body + size + (size & 1)
    else:
        raise _corrupt(f"more than {_MAX_CHUNKS} chunks without finding both fmt and data")
    if fmt is None:
        raise _corrupt(f"the WAV header is truncated or invalid: no fmt chunk in {source.size:,} bytes")
    if data is None:
        raise _corrupt(f"no data chunk in {source.size:,} bytes: the WAV is truncated or invalid")
    block = fmt.channels * fmt.sample_bytes
    frames = data[1] // block
    info = WavInfo(fmt.kind, fmt.sample_rate, fmt.channels, fmt.bits, frames)
    return _Layout(info, fmt, data[0], frames * block, data[2] and riff)


def _parse_fmt(source: _Source, body: int, size: int) -> _Fmt:
    if body + size > source.size:
        raise _corrupt(f"fmt chunk claims {size:,} bytes but the file ends after {source.size:,}")
    if size < 16:
        raise _corrupt(f"fmt chunk is {size} bytes, shorter than the 16 every WAV needs")
    raw = source.read(body, min(size, 40))
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", raw)
    if channels == 0:
        raise _corrupt("the fmt chunk says the audio has 0 channels")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _corrupt(f"sample rate {rate:,} Hz is outside the supported {MIN_RATE:,}..{MAX_RATE:,} Hz")
    if tag == _EXTENSIBLE:
        tag = _extensible_subformat(raw, size)
    kind, sample_bytes = _sample_layout(tag, bits)
    if block_align != channels * sample_bytes:
        raise _corrupt(
            f"block align {block_align} does not match {channels} channel(s) x {sample_bytes} bytes per sample"
        )
    return _Fmt(kind, channels, rate, bits, sample_bytes)


def _extensible_subformat(raw: bytes, size: int) -> int:
    """The format tag inside a WAVE_FORMAT_EXTENSIBLE sub-format GUID."""
    if size < 40:
        raise _corrupt(f"WAVE_FORMAT_EXTENSIBLE fmt chunk is {size} bytes; it needs 40")
    guid = raw[24:40]
    tag, high = struct.unpack_from("<HH", guid)
    if high != 0 or guid[4:] != _GUID_TAIL:
        raise _unsupported(f"WAVE_FORMAT_EXTENSIBLE sub-format {guid.hex()} is not PCM or float")
    return tag


def _sample_layout(tag: int, bits: int) -> tuple[str, int]:
    """("pcm" | "float", bytes per sample) for the encodings we decode."""
    if tag == _PCM:
        if bits == 0:
            raise _corrupt("the fmt chunk says 0 bits per sample")
        if bits > 32:
            raise _unsupported(f"{bits}-bit integer PCM is not supported (8, 16, 24 and 32-bit are)")
        return "pcm", (bits + 7) // 8  # e.g. 12-bit samples sit left-justified in 2 bytes
    if tag == _FLOAT:
        if bits not in (32, 64):
            raise _unsupported(f"{bits}-bit float WAV is not supported (32 and 64-bit are)")
        return "float", bits // 8
    name = _TAG_NAMES.get(tag, "an unknown encoding")
    raise _unsupported(f"this WAV uses {name} (format tag 0x{tag:04X}); convert it to PCM or float WAV")


def _parse_ds64(source: _Source, body: int, size: int) -> int:
    """RF64/BW64: the real 64-bit data size that the data chunk's 0xFFFFFFFF stands for."""
    raw = source.read(body, 24)
    if size < 24 or len(raw) < 24:
        raise _corrupt("the RF64 ds64 chunk is truncated")
    return int(struct.unpack_from("<Q", raw, 8)[0])


def _data_extent(source: _Source, body: int, size: int, ds64: int | None) -> tuple[int, int, bool]:
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
        raise _corrupt(
            f"data chunk claims {size:,} bytes but only {available:,} follow it "
            f"(the file ends after {source.size:,} bytes)"
        )
    return body, size, True


def _looks_like_chunk(source: _Source, offset: int) -> bool:
    """Whether bytes after an empty data chunk are another chunk rather than unsized samples."""
    header = source.read(offset, 8)
    if len(header) < 8 or not all(0x20 <= b < 0x7F for b in header[:4]):
        return False
    return offset + 8 + struct.unpack_from("<I", header, 4)[0] <= source.size


# --------------------------------------------------------------------------- WAV samples


def _decode_wav(source: _Source, path: Path | None, max_duration_s: float | None) -> Audio:
    layout = _parse_wav(source)
    info = _nonempty(layout.info)
    _check_duration(info, max_duration_s)
    raw = source.samples(layout.data_offset, layout.data_bytes)
    if is_native(info):
        samples = raw.view("<i2").astype(np.int16, copy=False)
        return Audio(samples, path if layout.exact else None)
    return Audio(_render(_frame_reader(raw, layout.fmt), info.frames, info.sample_rate))


def _frame_reader(raw: np.ndarray, fmt: _Fmt) -> Reader:
    """Reader giving mono float32 in [-1, 1] for frames start..stop-1 of the raw data."""
    block = fmt.channels * fmt.sample_bytes

    def read(start: int, stop: int) -> np.ndarray:
        return _downmix(_to_float(raw[start * block : stop * block], fmt), fmt.channels)

    return read


def _downmix(x: np.ndarray, channels: int) -> np.ndarray:
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


def _to_float(chunk: np.ndarray, fmt: _Fmt) -> np.ndarray:
    """Interleaved samples as float32 in [-1, 1], vectorised for every sample width."""
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


def _render(read: Reader, n_in: int, rate: int) -> np.ndarray:
    """Resample (if needed) block by block into one preallocated int16 array."""
    out = np.empty(output_length(n_in, rate, SAMPLE_RATE), dtype=np.int16)
    pos = 0
    for block in resample_blocks(read, n_in, rate, SAMPLE_RATE):
        out[pos : pos + len(block)] = _float_to_int16(block)
        pos += len(block)
    return out


def _float_to_int16(x: np.ndarray) -> np.ndarray:
    """Clip to [-1, 1], scale and round; NaN (from broken float files) becomes silence."""
    y = np.multiply(np.nan_to_num(x), 32768.0, dtype=np.float32)
    np.rint(y, out=y)
    np.clip(y, -32768.0, 32767.0, out=y)
    return y.astype(np.int16)


# --------------------------------------------------------------------------- other containers


def _import_soundfile(kind: str) -> Any:
    """The optional decoder, imported lazily so the agent starts fast and works without it."""
    try:
        import soundfile
    except (ImportError, OSError) as exc:  # OSError: the package is there but libsndfile is not
        message = f"{kind.upper()} audio needs the optional soundfile package: {FORMATS_EXTRA}"
        raise _unsupported(message) from exc
    return soundfile


_SOUNDFILE_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError, struct.error)


def _probe_other(target: str | io.BytesIO, kind: str) -> WavInfo:
    soundfile = _import_soundfile(kind)
    try:
        with soundfile.SoundFile(target) as f:
            return _nonempty(_soundfile_info(f, kind))
    except _SOUNDFILE_ERRORS as exc:
        raise _corrupt(f"could not read this {kind.upper()} file: {exc}") from exc


def _decode_other(target: str | io.BytesIO, kind: str, max_duration_s: float | None) -> Audio:
    """Decode via soundfile, never reading more frames than the header claims.

    Blocks are collected and joined once, so a header that overstates its length costs
    nothing, and one that understates it cannot make us decode a decompression bomb.
    """
    soundfile = _import_soundfile(kind)
    try:
        with soundfile.SoundFile(target) as f:
            info = _nonempty(_soundfile_info(f, kind))
            _check_duration(info, max_duration_s)
            mono = _read_mono(f, info.frames)
    except _SOUNDFILE_ERRORS as exc:
        raise _corrupt(f"could not decode this {kind.upper()} file: {exc}") from exc
    if len(mono) == 0:
        raise AudioError(f"the {kind.upper()} file contains no audio frames", code="empty")
    if info.sample_rate == SAMPLE_RATE:
        return Audio(mono)

    def read(start: int, stop: int) -> np.ndarray:
        return mono[start:stop].astype(np.float32) * np.float32(1 / 32768)

    return Audio(_render(read, len(mono), info.sample_rate))


def _soundfile_info(f: Any, kind: str) -> WavInfo:
    rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
    if channels < 1:
        raise _corrupt(f"the {kind.upper()} file says it has {channels} channels")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _corrupt(f"sample rate {rate:,} Hz is outside the supported {MIN_RATE:,}..{MAX_RATE:,} Hz")
    return WavInfo(kind, rate, channels, _subtype_bits(str(f.subtype)), max(frames, 0))


def _subtype_bits(subtype: str) -> int:
    """Bits per sample for libsndfile subtypes; 0 for lossy codecs (Vorbis, Opus, MP3)."""
    table = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64}
    return table.get(subtype, 0)


def _read_mono(f: Any, limit: int) -> np.ndarray:
    """At most `limit` frames as mono int16 at the source rate (half the memory of float32)."""
    blocks = []
    total = 0
    while total < limit:
        chunk = f.read(min(_SOUNDFILE_BLOCK, limit - total), dtype="float32", always_2d=True)
        if len(chunk) == 0:
            break
        mono = _downmix(chunk.reshape(-1), chunk.shape[1])
        blocks.append(_float_to_int16(mono))
        total += len(chunk)
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)


# --------------------------------------------------------------------------- writing


def _as_int16(samples: np.ndarray) -> np.ndarray:
    """Mono samples as contiguous little-endian int16 (float is clipped and scaled)."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {x.shape}")
    if x.dtype.kind == "f":
        x = _float_to_int16(np.clip(x, -1.0, 1.0))
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
        b"fmt ", 16, _PCM, 1, int(sample_rate), 2 * int(sample_rate), 2, 16,
        b"data", data_bytes,
    )  # fmt: skip


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems refuse to fsync directories, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
