"""What an audio header says (`WavInfo`), and the checks made on it before any sample is read.

Shared by the WAV parser (`agent.audio.riff`) and the soundfile path (`agent.audio.containers`)
so both reject bad input with the same `AudioError` codes and messages: the codes are part of
the public MQTT API, and limits must be decided from the header, never after decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import AudioError

MIN_RATE = 1000
MAX_RATE = 384_000


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


def check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise AudioError(f"the file is {size:,} bytes; the limit is {max_bytes:,} bytes", code="too_large")


def check_duration(info: WavInfo, max_duration_s: float | None) -> None:
    if max_duration_s is not None and info.duration_s > max_duration_s:
        raise AudioError(
            f"the audio is {info.duration_s:.1f} s long; the limit is {max_duration_s:g} s", code="too_long"
        )


def nonempty(info: WavInfo) -> WavInfo:
    if info.frames <= 0:
        raise AudioError("the file has a valid header but contains no audio frames", code="empty")
    return info


def corrupt(message: str) -> AudioError:
    return AudioError(message, code="corrupt")


def unsupported(message: str) -> AudioError:
    return AudioError(message, code="unsupported_format")
