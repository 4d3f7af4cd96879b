"""The audio ring buffer: overruns counted instead of blocking, timeouts, wake-ups, nothing lost."""

from __future__ import annotations

import threading
import time

import numpy as np

from agent.audio.ring import RingBuffer


def test_ring_counts_overruns_instead_of_blocking() -> None:
    ring = RingBuffer(1000)
    assert ring.write(b"\x01" * 600)
    assert not ring.write(b"\x02" * 600)  # does not fit: dropped whole
    assert ring.write(b"\x03" * 400)
    assert (ring.overruns, ring.overrun_bytes) == (1, 600)
    data = ring.read(1000, timeout=0)
    assert data is not None and bytes(data) == b"\x01" * 600 + b"\x03" * 400


def test_ring_read_times_out_with_none() -> None:
    ring = RingBuffer(1000)
    ring.write(b"\x00" * 10)
    start = time.monotonic()
    assert ring.read(100, timeout=0.2) is None
    assert 0.15 <= time.monotonic() - start < 10   # waited, then gave up; wide for a loaded machine
    assert ring.available == 10  # a timed-out read takes nothing


def test_ring_wakes_the_reader_on_write_and_on_close() -> None:
    ring = RingBuffer(1000)
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append((ring.read(4, timeout=10), time.monotonic())))
    reader.start()
    time.sleep(0.05)   # setup, not a proof: most likely the reader waits already (if not, it still passes)
    written = time.monotonic()
    ring.write(b"abcd")
    reader.join(timeout=5)
    data, woke = results.pop()
    assert bytes(data) == b"abcd" and woke - written < 5   # not the 10 s timeout; wide for a loaded machine

    reader = threading.Thread(target=lambda: results.append((ring.read(4, timeout=10), time.monotonic())))
    reader.start()
    time.sleep(0.05)
    closed = time.monotonic()
    ring.close()
    reader.join(timeout=5)
    data, woke = results.pop()
    assert data is None and woke - closed < 5
    assert not ring.write(b"late")


def test_ring_loses_nothing_when_the_consumer_keeps_up() -> None:
    chunk, chunks = 960, 2000
    payload = (np.arange(chunk * chunks, dtype=np.uint32) * 2654435761 % 251).astype(np.uint8)
    ring = RingBuffer(chunk * 256 + 123)  # not a multiple of the chunk: reads and writes wrap

    def produce() -> None:
        for i in range(chunks):
            ring.write(payload[i * chunk:(i + 1) * chunk].tobytes())
            if i % 16 == 0:
                time.sleep(0.001)
        ring.close()

    producer = threading.Thread(target=produce)
    producer.start()
    received = []
    while True:
        data = ring.read(1000, timeout=10)  # a read size unrelated to the write size
        if data is None:
            break
        received.append(data)
    producer.join(timeout=10)
    assert ring.overruns == 0
    assert np.array_equal(np.concatenate(received), payload)
