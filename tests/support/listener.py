"""An in-process Listener with a microphone that can be unplugged mid-stream, and a recorder of what
it hands on (alerts, spooled segments).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from agent.audio.capture import CaptureError, EndOfStream
from agent.settings import ListenSettings, VADSettings
from agent.sources.listener import Listener


class FlakyMicrophone:
    """Delivers `samples`; fails once at `fail_at` samples, then refuses `bad_starts` starts."""

    name = "fake:usb"

    def __init__(self, samples: np.ndarray, fail_at: int, bad_starts: int) -> None:
        self.samples, self.fail_at, self.bad_starts = samples, fail_at, bad_starts
        self.pos, self.open, self.starts, self.stops = 0, False, 0, 0

    def start(self) -> None:
        self.starts += 1
        if self.pos >= self.fail_at and self.bad_starts > 0:
            self.bad_starts -= 1
            raise CaptureError("no input device matches 'usb'")
        self.open = True

    def read(self, n: int, timeout: float) -> np.ndarray | None:
        assert self.open
        if self.pos >= len(self.samples):
            raise EndOfStream
        if self.pos < self.fail_at <= self.pos + n:
            self.pos = self.fail_at
            raise CaptureError("input device 'usb' stopped delivering audio")
        out = self.samples[self.pos:self.pos + n]
        self.pos += len(out)
        time.sleep(0.001)
        return out

    def stop(self) -> None:
        self.open = False
        self.stops += 1

    def stats(self) -> dict:
        return {"source": self.name, "overruns": 0}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.changed = threading.Event()

    def emit(self, topic: str, body: dict) -> None:
        self.events.append((topic, body))

    def alert(self, kind: str, level: str, data: dict) -> None:
        self.events.append(("alert", {"kind": kind, "level": level, **data}))

    def clear(self, kind: str) -> None:
        self.events.append(("alert", {"kind": kind, "level": "ok"}))

    def vad(self, event: str) -> list[dict]:
        return [b for t, b in self.events if t == "vad" and b["event"] == event]


def make(tmp_path: Path, source, wanted=lambda: True) -> tuple[Listener, Recorder]:
    rec = Recorder()
    listener = Listener(ListenSettings(enabled=True), VADSettings(), tmp_path / "spool", source=None,
                        emit=rec.emit, wanted=wanted, on_change=rec.changed.set, raise_alert=rec.alert,
                        clear_alert=rec.clear)
    listener.source = source
    return listener, rec


def wait(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
