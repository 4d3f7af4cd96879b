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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import select
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from agent.audio.ring import RingBuffer
from agent.errors import AgentError
from agent.settings import ListenSettings

log = logging.getLogger(__name__)

TARGET_RATE = 16000
STALL_TIMEOUT_S = 5.0  # an "active" stream that delivers nothing this long has lost its device
_RESAMPLE_CONTEXT = 256  # input samples of context on each side of a block, against edge clicks
_RESAMPLE_BLOCK_S = 0.25  # audio converted per call to the resampler


class EndOfStream(Exception):
    """The source has no more audio (pipe closed, file played to its end)."""


class CaptureError(AgentError):
    """The capture device could not be opened or stopped delivering audio: alert and retry."""

    code = "capture_error"


class AudioSource(Protocol):
    name: str

    def start(self) -> None: ...

    def read(self, frame_samples: int, timeout: float) -> np.ndarray | None:
        """`frame_samples` int16 samples at 16 kHz (fewer only at the very end), None on timeout.

        Raises EndOfStream once the audio is exhausted, CaptureError when the device failed.
        """

    def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


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


class _RateConverting:
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


class PyAudioSource(_RateConverting):
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
        pyaudio = _import_pyaudio()
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


class StdinSource(_RateConverting):
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


def _import_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:
        raise CaptureError("PyAudio is not installed (pip install 'voice-agent[mic]')") from exc
    _quiet_alsa()
    return pyaudio


_alsa_handler: Any = None


def _quiet_alsa() -> None:
    """Route ALSA's probing chatter (unknown PCM cards.pcm.rear, ...) away from the journal."""
    global _alsa_handler
    if _alsa_handler is not None:
        return
    _alsa_handler = False
    name = ctypes.util.find_library("asound")
    if not name:
        return
    try:
        lib = ctypes.CDLL(name)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_char_p)
        _alsa_handler = handler_type(lambda *args: None)  # kept referenced: ALSA holds the pointer
        lib.snd_lib_error_set_handler(_alsa_handler)
    except (OSError, AttributeError):
        pass


def _input_devices(pa: Any) -> list[dict[str, Any]]:
    try:
        default = pa.get_default_input_device_info()["index"]
    except (OSError, IOError):
        default = None
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info.get("maxInputChannels", 0)) > 0:
            devices.append({"index": index, "name": info["name"],
                            "max_input_channels": int(info["maxInputChannels"]),
                            "default_sample_rate": float(info["defaultSampleRate"]),
                            "default": index == default})
    return devices


def resolve_device(pa: Any, device: str | int | None) -> int | None:
    """PortAudio index for an index, a digit string or a case-insensitive name substring."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "default")):
        return None
    inputs = _input_devices(pa)
    if isinstance(device, int) or device.strip().isdigit():
        index = int(device)
        if any(d["index"] == index for d in inputs):
            return index
        raise CaptureError(f"no input device with index {index}", device=str(device))
    wanted = device.strip().lower()
    exact = [d for d in inputs if d["name"].lower() == wanted]
    matches = exact or [d for d in inputs if wanted in d["name"].lower()]
    if not matches:
        names = ", ".join(d["name"] for d in inputs) or "none"
        raise CaptureError(f"no input device matches {device!r} (inputs: {names})", device=str(device))
    return int(matches[0]["index"])


def list_devices() -> list[dict[str, Any]]:
    """Input-capable devices: index, name, max_input_channels, default_sample_rate, default."""
    pyaudio = _import_pyaudio()
    pa = pyaudio.PyAudio()
    try:
        return _input_devices(pa)
    finally:
        pa.terminate()


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
