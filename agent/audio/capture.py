"""Audio sources that hand 16 kHz mono int16 frames to the analyser thread.

Three sources share one small interface (`AudioSource`): a PortAudio microphone, raw PCM on a
pipe (`arecord -f S16_LE -r 16000 -c 1 | voice-agent run --listen-stdin`) and a WAV file played
at real-time pace for demos and tests. The microphone callback runs on PortAudio's real-time
thread, so it only copies bytes into a preallocated `RingBuffer`; resampling, framing and VAD
happen on the consumer side. Failures a supervisor should retry (no device, device unplugged,
stream stalled) raise `CaptureError`; a source that has simply run out raises `EndOfStream`.

Cost note (measured): every thread wake-up costs more than analysing its audio, so read in
blocks of 100-300 ms (and use a PortAudio buffer of that order) rather than one VAD frame at a
time; the ring wakes the reader only once its whole request is there.

The source contract lives in `agent.audio.source`, PortAudio device handling in
`agent.audio.devices` and rate conversion in `agent.audio.stream_resample`; their public names
are re-exported here.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from agent.audio.devices import import_pyaudio, list_devices, resolve_device
from agent.audio.ring import RingBuffer
from agent.audio.source import TARGET_RATE, AudioSource, CaptureError, EndOfStream
from agent.audio.stream_resample import RateConverting, StreamResampler
from agent.settings import ListenSettings

__all__ = [
    "TARGET_RATE",
    "AudioSource",
    "CaptureError",
    "EndOfStream",
    "PyAudioSource",
    "StdinSource",
    "StreamResampler",
    "WavFileSource",
    "list_devices",
    "open_source",
    "resolve_device",
]

log = logging.getLogger(__name__)

STALL_TIMEOUT_S = 5.0  # an "active" stream that delivers nothing this long has lost its device


class PyAudioSource(RateConverting):
    """A PortAudio input stream whose callback only copies into a ring buffer."""

    def __init__(self, device: str | int | None = None, sample_rate: int = TARGET_RATE,
                 frames_per_buffer: int = 480, ring_seconds: float = 10.0) -> None:
        self.device = device
        self.sample_rate = sample_rate
        self.frames_per_buffer = frames_per_buffer
        self.ring = RingBuffer(int(ring_seconds * sample_rate) * 2)
        self.name = f"pyaudio:{device if device is not None else 'default'}"
        self.input_overflows = 0
        self._pa: Any = None
        self._stream: Any = None
        self._stopping = False
        self._last_written = 0
        self._last_progress = time.monotonic()
        self._resampler = StreamResampler(sample_rate) if sample_rate != TARGET_RATE else None

    def start(self) -> None:
        pyaudio = import_pyaudio()
        # Set before opening: the callback may run before `open` returns.
        self._paContinue, self._overflow_flag = pyaudio.paContinue, pyaudio.paInputOverflow
        self._stopping = False
        if self.ring.closed:  # restarted after a failure: a fresh ring, no stale audio
            self.ring = RingBuffer(self.ring.capacity)
            self._resampler = StreamResampler(self.sample_rate) if self._resampler else None
            self._pending, self._ended = np.empty(0, dtype=np.int16), False
        self._pa = pyaudio.PyAudio()
        try:
            index = resolve_device(self._pa, self.device)
            self._stream = self._pa.open(
                rate=self.sample_rate, channels=1, format=pyaudio.paInt16, input=True,
                input_device_index=index, frames_per_buffer=self.frames_per_buffer,
                stream_callback=self._callback)
        except (OSError, ValueError) as exc:
            self._pa.terminate()
            self._pa = None
            raise CaptureError(f"cannot open input device {self.device!r}: {exc}", device=str(self.device)) from exc
        self._last_progress = time.monotonic()
        log.info("capturing from %s at %d Hz", self.name, self.sample_rate)

    def _callback(self, in_data: bytes, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        # Real-time thread: no analysis, no logging, no allocation beyond what PyAudio made.
        if status & self._overflow_flag:
            self.input_overflows += 1
        self.ring.write(in_data)
        return None, self._paContinue

    def _read_raw(self, samples: int, timeout: float) -> np.ndarray | None:
        if self._stopping:
            raise EndOfStream
        if self._stream is None:
            raise CaptureError("capture is not started")
        data = self.ring.read(samples * 2, timeout)
        if data is None:
            self._check_alive()
            return None
        return data.view(np.int16)

    def _check_alive(self) -> None:
        """Called on a read timeout: tell a stalled or dead device from a quiet moment."""
        if self._stopping:
            raise EndOfStream
        now, written = time.monotonic(), self.ring.written_bytes + self.ring.overrun_bytes
        if written != self._last_written:
            self._last_written, self._last_progress = written, now
        try:
            active = self._stream.is_active()
        except OSError:  # PortAudio reports an error for a stream whose device is gone
            active = False
        if not active or now - self._last_progress > STALL_TIMEOUT_S:
            raise CaptureError(f"input device {self.device!r} stopped delivering audio", device=str(self.device))

    def stop(self) -> None:
        self._stopping = True
        self.ring.close()
        try:
            if self._stream is not None:
                self._stream.stop_stream()
                self._stream.close()
        except OSError as exc:  # the device may already be gone; stopping must still succeed
            log.debug("closing the input stream failed: %s", exc)
        finally:
            self._stream = None
            if self._pa is not None:
                self._pa.terminate()
                self._pa = None

    def stats(self) -> dict[str, Any]:
        return {"source": self.name, "sample_rate": self.sample_rate, "overruns": self.ring.overruns,
                "overrun_bytes": self.ring.overrun_bytes, "input_overflows": self.input_overflows,
                "captured_bytes": self.ring.written_bytes, "buffered_bytes": self.ring.available}


class StdinSource(RateConverting):
    """Raw S16_LE mono PCM from a pipe; EOF ends the source."""

    def __init__(self, stream: BinaryIO | None = None, sample_rate: int = TARGET_RATE) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.sample_rate = sample_rate
        self.name = "stdin"
        self.bytes_read = 0
        self._held = bytearray()  # a partial frame that arrived before a timeout
        self._eof = False
        try:
            self._fd: int | None = self.stream.fileno()
        except (OSError, AttributeError, ValueError):
            self._fd = None  # an in-memory stream: plain blocking reads, always ready
        self._resampler = StreamResampler(sample_rate) if sample_rate != TARGET_RATE else None

    def start(self) -> None:
        pass

    def _read_raw(self, samples: int, timeout: float) -> np.ndarray | None:
        want = samples * 2
        deadline = time.monotonic() + timeout
        while len(self._held) < want and not self._eof:
            if self._fd is not None:
                # select + os.read on the descriptor, bypassing Python's buffer, so a quiet pipe
                # costs a timed wait, not a blocked thread that stop() cannot interrupt.
                ready, _, _ = select.select([self._fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    return None
                data = os.read(self._fd, want - len(self._held))
            else:
                data = self.stream.read(want - len(self._held))
            if not data:
                self._eof = True
            self._held += data
            self.bytes_read += len(data)
        usable = min(want, len(self._held) - len(self._held) % 2)
        if usable == 0:
            raise EndOfStream
        out = np.frombuffer(self._held[:usable], dtype="<i2").astype(np.int16, copy=False)
        del self._held[:usable]
        return out

    def stop(self) -> None:
        self._eof = True

    def stats(self) -> dict[str, Any]:
        return {"source": self.name, "sample_rate": self.sample_rate, "bytes_read": self.bytes_read,
                "overruns": 0}


class WavFileSource:
    """A WAV file delivered at real-time pace (demo, soak test) or as fast as it is read."""

    def __init__(self, path: str | Path, realtime: bool = True) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.name = f"file:{self.path.name}"
        self._samples = np.empty(0, dtype=np.int16)
        self._pos = 0
        self._t0 = 0.0

    def start(self) -> None:
        from agent.audio.wav import decode_file

        self._samples = np.ascontiguousarray(decode_file(self.path).samples, dtype=np.int16)
        self._pos = 0
        self._t0 = time.monotonic()

    def read(self, frame_samples: int, timeout: float) -> np.ndarray | None:
        if self._pos >= len(self._samples):
            raise EndOfStream
        end = min(self._pos + frame_samples, len(self._samples))
        if self.realtime:
            # Scheduled against the start time, not slept per frame, so the pace cannot drift.
            wait = self._t0 + end / TARGET_RATE - time.monotonic()
            if wait > timeout:
                time.sleep(max(0.0, timeout))
                return None
            if wait > 0:
                time.sleep(wait)
        frame, self._pos = self._samples[self._pos:end], end
        return frame

    def stop(self) -> None:
        self._pos = len(self._samples)

    def stats(self) -> dict[str, Any]:
        return {"source": self.name, "position_s": self._pos / TARGET_RATE, "overruns": 0}


def open_source(kind: str, settings: ListenSettings, *, path: str | Path | None = None,
                stream: BinaryIO | None = None, realtime: bool = True) -> AudioSource:
    """Build the source named by `kind`: "mic" (PyAudio), "stdin" or "file"."""
    if kind in ("mic", "pyaudio"):
        return PyAudioSource(settings.device, settings.sample_rate, settings.frames_per_buffer,
                             settings.ring_buffer_s)
    if kind == "stdin":
        return StdinSource(stream, TARGET_RATE)
    if kind in ("file", "wav"):
        if path is None:
            raise ValueError("a file source needs a path")
        return WavFileSource(path, realtime)
    raise ValueError(f"unknown audio source {kind!r}")
