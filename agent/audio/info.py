"""What an audio header says (`WavInfo`), and the checks made on it before any sample is read.

Shared by the WAV parser (`agent.audio.riff`) and the soundfile path (`agent.audio.containers`)
so both reject bad input with the same `AudioError` codes and messages: the codes are part of
the public MQTT API, and limits must be decided from the header, never after decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.audio.clip import SAMPLE_RATE
from agent.audio.resample import output_length
from agent.errors import AudioError

MIN_RATE = 1000
MAX_RATE = 384_000
# What decoded audio costs at its peak: the 16 kHz int16 samples (2 bytes each) plus the float32
# copy an engine makes of them (4 bytes each). Working buffers are a few MB whatever the length.
DECODED_BYTES_PER_SAMPLE = 2 + 4


@dataclass(frozen=True)
class WavInfo:
    """What the header says: enough to check limits and pick a decode path without reading samples.

    `format` is "pcm", "float", "alaw" or "mulaw" (G.711) for WAV (including WAVE_FORMAT_EXTENSIBLE), otherwise the
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


def check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise AudioError(f"the file is {size:,} bytes; the limit is {max_bytes:,} bytes", code="too_large")


def check_duration(info: WavInfo, max_duration_s: float | None) -> None:
    if max_duration_s is not None and info.duration_s > max_duration_s:
        raise AudioError(
            f"the audio is {info.duration_s:.1f} s long; the limit is {max_duration_s:g} s", code="too_long"
        )


def check_decoded(info: WavInfo, available_bytes: int, source_bytes: int = 0) -> None:
    """Refuse, from the header alone, audio whose decoded samples would not fit in the memory free.

    A 163 KiB FLAC of silence can hold half an hour at 48 kHz: the file size says nothing about
    what decoding costs, the frame count does. `available_bytes` is what the memory budget
    (machine or cgroup, agent/memory_budget.py) has free right now; `source_bytes` what the
    decoder holds besides (a WAV's raw samples, read whole while they are converted).
    """
    need = output_length(info.frames, info.sample_rate, SAMPLE_RATE) * DECODED_BYTES_PER_SAMPLE + source_bytes
    if need > available_bytes:
        raise AudioError(
            f"decoded to 16 kHz mono, these {info.duration_s:.1f} s of audio need {need / 2**20:,.0f} MB; "
            f"the memory budget has {available_bytes / 2**20:,.0f} MB free",
            code="too_large",
        )


def nonempty(info: WavInfo) -> WavInfo:
    if info.frames <= 0:
        raise AudioError("the file has a valid header but contains no audio frames", code="empty")
    return info


def corrupt(message: str) -> AudioError:
    return AudioError(message, code="corrupt")


def unsupported(message: str) -> AudioError:
    return AudioError(message, code="unsupported_format")
