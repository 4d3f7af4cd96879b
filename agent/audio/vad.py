"""Per-frame speech decisions: webrtcvad gated by energy above an adaptive noise floor.

webrtcvad on its own answers "speech" for much steady noise (fans, hiss, white noise), because
it looks at spectral shape, not level. Speech in a room is also louder than the room, so each
frame must additionally stand `energy_margin_db` above a running estimate of the noise floor.
The floor follows the level of non-speech frames: quickly down (a quieter room is trusted at
once) and slowly up (so the start of speech cannot drag the floor up with it before webrtcvad
fires). Speech frames never move it.

`classify_buffer` answers for a whole buffer from a fresh state, so its result depends on the
buffer alone and can be cached under a hash of the whole buffer (`VadCache`).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import webrtcvad

from agent.audio.vad_cache import VadCache

SILENCE_DBFS = -100.0  # digital silence is clamped here so the floor stays finite
FULL_SCALE_POWER = 32768.0 * 32768.0
FALL_TIME_S = 0.1  # time constant of the floor going down
RISE_TIME_S = 2.0  # time constant of the floor going up (non-speech frames only)
MIN_WINDOW_S = 3.0  # the floor is at least the quietest frame level of this last stretch
MIN_BLOCKS = 6
VALID_FRAME_MS = (10, 20, 30)
VALID_RATES = (8000, 16000, 32000, 48000)


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale, clamped at SILENCE_DBFS."""
    if len(samples) == 0:
        return SILENCE_DBFS
    x = samples.astype(np.float32)
    power = float(np.dot(x, x)) / (len(x) * FULL_SCALE_POWER)
    if power <= 1e-10:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(power))


class NoiseFloor:
    """Running noise level in dBFS.

    Non-speech frames move it: quickly down, slowly up. That alone can lock up when the room
    gets suddenly louder (a fan, a vacuum cleaner): the new noise passes the gate and
    webrtcvad, counts as speech and so never teaches the floor. Speech, unlike such noise, dips
    between words, so the floor is also never allowed below the quietest frame of the last
    MIN_WINDOW_S (minimum statistics, kept as block minima: O(1) per frame).
    """

    def __init__(self, frame_s: float) -> None:
        self.fall = 1.0 - math.exp(-frame_s / FALL_TIME_S)
        self.rise = 1.0 - math.exp(-frame_s / RISE_TIME_S)
        self.level: float | None = None
        self._block_frames = max(1, round(MIN_WINDOW_S / MIN_BLOCKS / frame_s))
        self._block_mins: deque[float] = deque(maxlen=MIN_BLOCKS)
        self._block_min = math.inf
        self._block_count = 0

    def update(self, level_db: float, is_speech: bool) -> None:
        if self.level is None:
            # The first frame seeds the floor: starting at -100 dBFS would open the gate to any
            # noise for the many seconds the slow rise needs to reach the real level.
            self.level = level_db
        elif level_db < self.level:
            self.level += self.fall * (level_db - self.level)
        elif not is_speech:
            self.level += self.rise * (level_db - self.level)
        self._block_min = min(self._block_min, level_db)
        self._block_count += 1
        if self._block_count == self._block_frames:
            self._block_mins.append(self._block_min)
            self._block_min, self._block_count = math.inf, 0
            if len(self._block_mins) == MIN_BLOCKS:
                self.level = max(self.level, min(self._block_mins))


class FrameClassifier:
    """Streaming speech / non-speech decision for fixed-length int16 frames."""

    def __init__(
        self,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        energy_margin_db: float = 9.0,
        sample_rate: int = 16000,
        cache: VadCache | None = None,
    ) -> None:
        if frame_ms not in VALID_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {VALID_FRAME_MS}, not {frame_ms}")
        if sample_rate not in VALID_RATES:
            raise ValueError(f"sample_rate must be one of {VALID_RATES}, not {sample_rate}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        self.aggressiveness = aggressiveness
        self.frame_ms = frame_ms
        self.energy_margin_db = float(energy_margin_db)
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.cache = cache
        self._vad = webrtcvad.Vad(aggressiveness)
        self._floor = NoiseFloor(frame_ms / 1000.0)
        self.last_level_db = SILENCE_DBFS

    @property
    def params(self) -> tuple[int, int, float, int]:
        return (self.aggressiveness, self.frame_ms, self.energy_margin_db, self.sample_rate)

    @property
    def noise_floor_dbfs(self) -> float | None:
        return self._floor.level

    def classify(self, frame: np.ndarray) -> bool:
        """Decide one frame (exactly `frame_samples` int16 samples) and update the floor."""
        speech, self.last_level_db = self._decide(self._vad, self._floor, frame)
        return speech

    def _decide(self, vad: webrtcvad.Vad, floor: NoiseFloor, frame: np.ndarray) -> tuple[bool, float]:
        level = rms_dbfs(frame)
        # webrtcvad reads the frame's memory directly: no bytes copy per frame.
        voiced = vad.is_speech(memoryview(np.ascontiguousarray(frame)).cast("B"), self.sample_rate)
        reference = level if floor.level is None else floor.level
        speech = bool(voiced) and level > reference + self.energy_margin_db
        # Frames webrtcvad rejects also teach the floor even when loud: otherwise a noise that
        # rises by more than the margin would be taken for speech forever.
        floor.update(level, speech)
        return speech, level

    def classify_buffer(self, buffer: np.ndarray) -> list[bool]:
        """Decisions for every whole frame of `buffer`, from a fresh state, cached by content.

        A trailing partial frame is ignored. The streaming state of `classify` is untouched.
        """
        data = np.ascontiguousarray(buffer, dtype=np.int16).ravel()
        key = None
        if self.cache is not None:
            key = VadCache.key(data, self.params)
            cached = self.cache.get(key)
            if cached is not None:
                return list(cached)
        vad = webrtcvad.Vad(self.aggressiveness)
        floor = NoiseFloor(self.frame_ms / 1000.0)
        n = self.frame_samples
        result = tuple(self._decide(vad, floor, data[i:i + n])[0] for i in range(0, len(data) - n + 1, n))
        if self.cache is not None and key is not None:
            self.cache.put(key, result)
        return list(result)
