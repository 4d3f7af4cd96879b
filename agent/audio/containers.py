"""Which container a file is (from its magic bytes), and decoding of the non-WAV ones.

Sniffing first lets every input get an error a person can act on ("MP4 is not supported",
"big-endian WAV", "not a WAV file") instead of a decoder's stack trace. FLAC, OGG, MP3 and
friends go through the optional `soundfile` package (``pip install voice-agent[formats]``),
imported only when such a file shows up, so the agent starts fast and works without it.
"""

from __future__ import annotations

import io
import struct
from typing import Any, BinaryIO

import numpy as np

from agent.audio.info import MAX_RATE, MIN_RATE, WavInfo, check_decoded, check_duration, corrupt, nonempty, unsupported
from agent.audio.pcm import downmix, render
from agent.audio.resample import output_length
from agent.audio.clip import SAMPLE_RATE, Audio
from agent.errors import AudioError

FORMATS_EXTRA = "pip install voice-agent[formats]"

_SOUNDFILE_BLOCK = 1 << 16  # frames per soundfile read
_SOUNDFILE_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError, struct.error)


# --------------------------------------------------------------------------- container sniffing


def sniff(head: bytes) -> str:
    """Container kind from the magic bytes: "wav", a soundfile kind, or an AudioError."""
    if len(head) < 4:
        raise corrupt(f"the file is only {len(head)} bytes, too short to be audio")
    magic = head[:4]
    if magic in (b"RIFF", b"RF64", b"BW64"):
        return _riff_form(head)
    if magic in (b"RIFX", b"FFIR"):
        raise unsupported("big-endian (RIFX) WAV files are not supported; convert to a standard WAV")
    other = _other_container(head)
    if other in ("mp4", "webm"):
        raise unsupported(f"{other.upper()} audio is not supported; convert it to WAV, FLAC, OGG or MP3")
    if other:
        return other
    raise corrupt(f"not a WAV file: it starts with {head[:4]!r} instead of b'RIFF'")


def _riff_form(head: bytes) -> str:
    if len(head) < 12:
        raise corrupt(f"the WAV header is truncated: the file is only {len(head)} bytes")
    form = head[8:12]
    if form == b"WAVE":
        return "wav"
    if all(0x20 <= b < 0x7F for b in form):
        raise unsupported(f"this RIFF file holds {form.decode('ascii')!r}, not WAVE audio")
    raise corrupt(f"RIFF header without the WAVE form type (found {form!r})")


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


# --------------------------------------------------------------------------- other containers


def _import_soundfile(kind: str) -> Any:
    """The optional decoder, imported lazily so the agent starts fast and works without it."""
    try:
        import soundfile
    except (ImportError, OSError) as exc:  # OSError: the package is there but libsndfile is not
        message = f"{kind.upper()} audio needs the optional soundfile package: {FORMATS_EXTRA}"
        raise unsupported(message) from exc
    return soundfile


def probe_other(target: str | io.BytesIO, kind: str) -> WavInfo:
    soundfile = _import_soundfile(kind)
    try:
        with soundfile.SoundFile(target) as f:
            return nonempty(_soundfile_info(f, kind))
    except _SOUNDFILE_ERRORS as exc:
        raise corrupt(f"could not read this {kind.upper()} file: {exc}") from exc


def decode_other(target: str | BinaryIO, kind: str, max_duration_s: float | None, available_bytes: int) -> Audio:
    """Decode via soundfile block by block straight into 16 kHz mono int16.

    The output is allocated once from the header's frame count, after the duration and the
    memory it needs were checked; the source-rate samples only ever exist one block at a time,
    so a 163 KiB FLAC holding half an hour at 48 kHz costs its 16 kHz output, not the 1,170x of
    decoding it whole. Never more frames than the header claims are read, so a header that
    understates its length cannot make us decode a decompression bomb; one that overstates it
    is cut to what the file really held.
    """
    soundfile = _import_soundfile(kind)
    try:
        with soundfile.SoundFile(target) as f:
            info = nonempty(_soundfile_info(f, kind))
            check_duration(info, max_duration_s)
            check_decoded(info, available_bytes)
            reader = _BlockReader(f, info.frames)
            samples = render(reader.read, info.frames, info.sample_rate)
    except _SOUNDFILE_ERRORS as exc:
        raise corrupt(f"could not decode this {kind.upper()} file: {exc}") from exc
    if reader.decoded == 0:
        raise AudioError(f"the {kind.upper()} file contains no audio frames", code="empty")
    if reader.decoded < info.frames:
        samples = samples[: output_length(reader.decoded, info.sample_rate, SAMPLE_RATE)]
    return Audio(samples)


class _BlockReader:
    """`read(start, stop)` for the resampler over a file soundfile decodes front to back.

    The resampler asks for overlapping, increasing ranges; only the part of the last block
    still ahead of `start` is kept, so working memory is a block or two whatever the length.
    Frames past the end of what the file really holds read as silence.
    """

    def __init__(self, f: Any, limit: int) -> None:
        self._f = f
        self._limit = limit
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0
        self.decoded = 0
        self._ended = False

    def read(self, start: int, stop: int) -> np.ndarray:
        drop = min(max(0, start - self._buf_start), len(self._buf))
        self._buf, self._buf_start = self._buf[drop:], self._buf_start + drop
        blocks = [self._buf]
        have = self._buf_start + len(self._buf)
        while have < stop and not self._ended:
            want = min(max(_SOUNDFILE_BLOCK, stop - have), self._limit - have)
            chunk = self._f.read(want, dtype="float32", always_2d=True)
            if len(chunk) == 0:
                self._ended = True
                break
            blocks.append(downmix(chunk.reshape(-1), chunk.shape[1]))
            have += len(chunk)
            self.decoded += len(chunk)
        if have < stop:
            blocks.append(np.zeros(stop - have, dtype=np.float32))
        if len(blocks) > 1:
            self._buf = np.concatenate(blocks)
        return self._buf[start - self._buf_start : stop - self._buf_start]


def _soundfile_info(f: Any, kind: str) -> WavInfo:
    rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
    if channels < 1:
        raise corrupt(f"the {kind.upper()} file says it has {channels} channels")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise corrupt(f"sample rate {rate:,} Hz is outside the supported {MIN_RATE:,}..{MAX_RATE:,} Hz")
    return WavInfo(kind, rate, channels, _subtype_bits(str(f.subtype)), max(frames, 0))


def _subtype_bits(subtype: str) -> int:
    """Bits per sample for libsndfile subtypes; 0 for lossy codecs (Vorbis, Opus, MP3)."""
    table = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64}
    return table.get(subtype, 0)
