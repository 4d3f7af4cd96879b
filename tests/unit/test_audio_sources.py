"""Audio sources in process: a stdin pipe source, WAV pacing, and the streaming resampler."""

from __future__ import annotations

import io
import os
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.audio.capture import EndOfStream, StdinSource, StreamResampler, WavFileSource
from agent.audio.resample import resample
from tests.support.speech import SAMPLE_RATE


def test_stdin_source_frames_then_end_of_stream() -> None:
    data = np.arange(1000, dtype=np.int16)
    source = StdinSource(io.BytesIO(data.astype("<i2").tobytes()))
    source.start()
    frames = [source.read(480, timeout=1.0), source.read(480, timeout=1.0), source.read(480, timeout=1.0)]
    assert [len(f) for f in frames] == [480, 480, 40]  # the last frame is short
    assert np.array_equal(np.concatenate(frames), data)
    with pytest.raises(EndOfStream):
        source.read(480, timeout=1.0)


def test_stdin_source_times_out_on_a_quiet_pipe_and_keeps_partial_data() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as reader, os.fdopen(write_fd, "wb", buffering=0) as writer:
        source = StdinSource(reader)
        writer.write(np.arange(100, dtype="<i2").tobytes())
        start = time.monotonic()
        assert source.read(480, timeout=0.2) is None
        assert 0.15 <= time.monotonic() - start < 10   # waited, then gave up; wide for a loaded machine
        later = threading.Timer(0.1, writer.write, [np.arange(100, 480, dtype="<i2").tobytes()])
        later.start()
        frame = source.read(480, timeout=5.0)
        later.join()
        assert frame is not None and np.array_equal(frame, np.arange(480))


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def drain(source: WavFileSource) -> np.ndarray:
    frames = []
    source.start()
    while True:
        try:
            frame = source.read(480, timeout=0.5)
        except EndOfStream:
            return np.concatenate(frames)
        if frame is not None:
            frames.append(frame)


# One second of audio: paced, it takes about a second (at most 3 s on a loaded machine); unpaced, far
# less than the paced lower bound.
@pytest.mark.parametrize("realtime, low, high", [(True, 0.8, 3.0), (False, 0.0, 0.6)])
def test_wav_file_source_pacing(tmp_path: Path, realtime: bool, low: float, high: float) -> None:
    samples = (np.random.default_rng(5).standard_normal(SAMPLE_RATE) * 1000).astype(np.int16)
    source = WavFileSource(write_wav(tmp_path / "one-second.wav", samples), realtime=realtime)
    start = time.monotonic()
    out = drain(source)
    assert low <= time.monotonic() - start <= high
    assert np.array_equal(out, samples)


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_stream_resampler_matches_whole_signal_resampling(rate: int) -> None:
    rng = np.random.default_rng(rate)
    signal = (rng.standard_normal(rate * 2) * 3000).astype(np.int16)
    whole = resample(signal.astype(np.float32) / 32768.0, rate, SAMPLE_RATE) * 32768.0
    stream = StreamResampler(rate)
    pieces = [stream.push(signal[i:i + 441]) for i in range(0, len(signal), 441)] + [stream.finish()]
    chunked = np.concatenate(pieces)
    assert len(chunked) == len(whole)
    assert np.max(np.abs(chunked.astype(np.float64) - whole)) <= 2.0  # rounding only, no seams
