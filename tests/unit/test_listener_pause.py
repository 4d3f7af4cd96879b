"""agent.sources.listener in process: when listening is not wanted the microphone closes, and a poke reopens it."""

from __future__ import annotations

import threading
import time

import numpy as np

from tests.support.listener import FlakyMicrophone, make, wait


def test_not_wanted_closes_the_microphone_and_poke_reopens_it(tmp_path):
    wanted = threading.Event()
    wanted.set()
    mic = FlakyMicrophone(np.zeros(16000 * 600, dtype=np.int16), fail_at=10 ** 12, bad_starts=0)
    listener, rec = make(tmp_path, mic, wanted=wanted.is_set)
    listener.start()
    wait(lambda: listener.active and mic.open)
    wanted.clear()
    listener.poke()
    wait(lambda: not mic.open and listener.state == "paused")
    assert not listener.active
    position = mic.pos
    time.sleep(0.2)
    assert mic.pos == position   # nothing is read while paused: the stream is closed
    wanted.set()
    listener.poke()
    wait(lambda: listener.active and mic.open and mic.pos > position)
    listener.stop()
    assert listener.state == "stopped" and not mic.open and mic.starts == 2
