"""What stands between capture and the VAD: noise suppression, the wake word, automatic gain.

    frame -> noise suppression (listen.noise_suppression) -> wake word (listen.mode wake) -> VAD
          -> automatic gain (listen.auto_gain) -----------------------------------------> segment

In continuous mode every cleaned frame goes on to the VAD. In wake mode nothing does until a
wake word is heard: then the audio that follows (never the audio before it, so nothing said
before the wake reaches the disk) goes to the VAD for one command, which ends at the VAD's end of
speech or after `listen.command_max_s`. Automatic gain runs after the wake word model only.
The wake word and the VAD decide on the suppressed audio; the segment that is transcribed is
cut from the captured audio (with gain), because suppression artefacts cost the transcriber words.
"""

from __future__ import annotations

import numpy as np

from agent.audio.noise import FRAME_SAMPLES, gain_filter, noise_filter
from agent.audio.source import TARGET_RATE
from agent.audio.wake_word import Detection, WakeWordDetector
from agent.settings import ListenSettings


class WakeGate:
    def __init__(self, listen: ListenSettings) -> None:
        self._noise = noise_filter(listen.noise_suppression)
        self._detector = WakeWordDetector(listen.wake_word) if listen.mode == "wake" else None
        self._gain = gain_filter(listen.auto_gain)
        self._framed = any(p is not None for p in (self._noise, self._detector, self._gain))
        self._held = np.empty(0, dtype=np.int16)   # a partial 10 ms frame, until the next read completes it
        self._command_samples = int(listen.command_max_s * TARGET_RATE)
        self._left = 0           # samples the current command may still take
        self.wake: Detection | None = None   # the wake the current command follows

    @property
    def gated(self) -> bool:
        """Wake mode: the VAD hears only what follows a wake word."""
        return self._detector is not None

    def process(self, frame: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, Detection | None]:
        """(audio for the segment, the same audio as the VAD should hear it, a new wake or None).

        The first two are None while the gate is closed (wake mode, waiting). The VAD and the wake
        word hear the suppressed audio; the segment keeps the captured audio (with automatic gain):
        on real recordings, transcribing suppressed audio cost words (docs/performance.md)."""
        if self._framed:   # whole 10 ms frames only, so every filter returns as much as it takes
            data = np.concatenate((self._held, frame)) if len(self._held) else frame
            whole = len(data) - len(data) % FRAME_SAMPLES
            frame, self._held = data[:whole], data[whole:]
        heard = self._noise.process(frame) if self._noise is not None else frame
        woke = None
        if self._detector is not None:
            detection = self._detector.process(heard)   # runs on every frame: its state stays continuous
            if detection is not None and self.wake is None:
                woke = self.wake = detection
                self._left = self._command_samples
                return None, None, woke   # the block that held the wake phrase's end stays out
            if self.wake is None:
                return None, None, None
            self._left -= len(frame)
        captured = self._gain.process(frame) if self._gain is not None else frame
        return captured, heard, woke

    @property
    def command_over(self) -> bool:
        """The command has used its `command_max_s`."""
        return self.wake is not None and self._left <= 0

    def end_command(self) -> None:
        """Back to waiting for a wake word."""
        self.wake = None

    def stats(self) -> dict:
        d = self._detector
        if d is None:
            return {"mode": "continuous"}
        return {"mode": "wake", "engine": d.engine, "models": d.models, "detections": d.detections,
                "waiting": self.wake is None}

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
