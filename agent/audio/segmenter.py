"""Streaming speech segmentation: int16 chunks in, SpeechStart / SpeechEnd events out.

Fed from a capture thread with chunks of any length, the segmenter cuts them into VAD frames,
asks the `FrameClassifier` about each, and runs a small state machine:

- idle -> speech when at least 80 % of the last `min_speech_ms` of frames are voiced. The
  speech onset is then traced back from that window over earlier voiced frames separated by
  gaps shorter than ONSET_BRIDGE_MS (real onsets are choppy: "what is" may be voiced, dip under
  the energy gate for 150 ms, then continue), and the segment starts `pre_roll_ms` before it,
  so the soft start of a word the VAD recognised late is not cut off;
- speech -> idle after `silence_ms` of unvoiced frames; the segment ends at the end of the last
  voiced frame and its audio keeps only a short tail of the silence;
- speech longer than `max_segment_s` is cut (at the last frame boundary that keeps the segment
  within the limit, since a transcriber's window may be exactly that long): one segment ends
  and the next starts at the same sample, so consecutive segments cover the speech without gap
  or overlap.

All audio goes once into one preallocated int16 ring that is both the frame assembler and the
history the pre-roll and the segment audio are copied from, so the cost is one copy per sample
in and one copy per segment out, whatever the chunk size. Decisions are made per frame in
stream order, so the events do not depend on how the stream was chunked. Times are seconds of
stream time: samples consumed / sample rate.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from agent.audio.vad import FrameClassifier, rms_dbfs
from agent.settings import VADSettings

ONSET_VOICED_FRACTION = 0.8
ONSET_BRIDGE_MS = 250  # unvoiced gaps this short still belong to the speech being started
ONSET_LOOKBACK_MS = 1000  # how far before the onset window the trace back may reach
TAIL_MS = 200  # audio kept after the last voiced frame: decaying phonemes fall under the gate


@dataclass(frozen=True)
class SpeechStart:
    segment_id: str
    start_s: float  # includes the pre-roll


@dataclass(frozen=True)
class SpeechEnd:
    """A finished segment. `samples` covers [start_s, end_s + a tail of at most TAIL_MS)."""

    segment_id: str
    start_s: float
    end_s: float  # end of the last voiced frame (or the cut point)
    duration_s: float  # end_s - start_s
    rms_dbfs: float  # level of the speech part, from the first voiced frame to end_s
    samples: np.ndarray = field(repr=False, compare=False)  # int16
    reason: str = "silence"  # "silence", "max_length" (cut; the next segment follows) or "flush"


Event = Union[SpeechStart, SpeechEnd]


class Segmenter:
    """The speech state machine over a stream of 16 kHz mono int16 audio."""

    def __init__(
        self,
        settings: VADSettings | None = None,
        sample_rate: int = 16000,
        segment_prefix: str | None = None,
        classifier: FrameClassifier | None = None,
        tail_ms: int = TAIL_MS,
    ) -> None:
        s = settings or VADSettings()
        self.settings = s
        self.sample_rate = sample_rate
        self.prefix = segment_prefix or uuid.uuid4().hex[:8]
        self.classifier = classifier or FrameClassifier(s.aggressiveness, s.frame_ms, s.energy_margin_db, sample_rate)
        self.frame = f = self.classifier.frame_samples
        self.pre_roll = sample_rate * s.pre_roll_ms // 1000
        self.tail = sample_rate * tail_ms // 1000
        self.window = max(1, round(s.min_speech_ms / s.frame_ms))
        self.needed = math.ceil(ONSET_VOICED_FRACTION * self.window)
        self.silence_frames = max(1, math.ceil(s.silence_ms / s.frame_ms))
        self.bridge_frames = math.ceil(ONSET_BRIDGE_MS / s.frame_ms)
        lookback = self.window + math.ceil(ONSET_LOOKBACK_MS / s.frame_ms)
        self.max_samples = max(f, int(round(s.max_segment_s * sample_rate)))
        # History needed: a whole segment while speaking, or pre-roll plus the onset lookback
        # while idle. The ring holds whole frames so a frame never wraps.
        need = max(self.max_samples + f, self.pre_roll + lookback * f) + 2 * f
        self.capacity = math.ceil(need / f) * f
        self._ring = np.zeros(self.capacity, dtype=np.int16)
        self._heard = np.zeros(f, dtype=np.int16)   # the frame being filled, as the VAD hears it
        self._pos = 0  # samples consumed since the stream started
        self._recent: deque[bool] = deque(maxlen=self.window)
        self._recent_voiced = 0
        self._history: deque[bool] = deque(maxlen=lookback)  # idle decisions, for the onset
        self._in_speech = False
        self._seg_id = ""
        self._seg_start = 0
        self._seg_onset = 0
        self._last_voiced_end = 0
        self._silence_run = 0
        self._prev_end = 0  # last sample handed out, so a pre-roll never repeats audio
        self._counter = 0
        self.frames = 0
        self.voiced_frames = 0
        self.segments = 0

    # --- public API --------------------------------------------------------------------------

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def position_s(self) -> float:
        return self._pos / self.sample_rate

    def feed(self, chunk: np.ndarray, heard: np.ndarray | None = None) -> list[Event]:
        """Consume int16 samples of any length and return the events they completed.

        `heard` (as long as `chunk`) is the same audio as the VAD should judge it, e.g. noise
        suppressed: the decisions follow `heard`, the segments keep `chunk`."""
        x = np.asarray(chunk)
        if x.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {x.dtype}")
        x = x.reshape(-1)
        h = None if heard is None else np.asarray(heard, dtype=np.int16).reshape(-1)
        if h is not None and len(h) != len(x):
            raise ValueError(f"heard has {len(h)} samples for {len(x)}")
        events: list[Event] = []
        f, cap, ring = self.frame, self.capacity, self._ring
        i, n = 0, len(x)
        while i < n:
            w = self._pos % cap
            take = min(f - self._pos % f, n - i)
            ring[w:w + take] = x[i:i + take]
            if h is not None:
                self._heard[self._pos % f:self._pos % f + take] = h[i:i + take]
            self._pos += take
            i += take
            if self._pos % f == 0:
                frame_start = w + take - f
                self._on_frame(ring[frame_start:frame_start + f] if h is None else self._heard, events)
        return events

    def flush(self) -> list[Event]:
        """End of stream: close an open segment at its last voiced frame."""
        events: list[Event] = []
        if self._in_speech:
            self._end(self._last_voiced_end, "flush", events)
        return events

    def stats(self) -> dict[str, float | int | None]:
        return {
            "frames": self.frames,
            "voiced_frames": self.voiced_frames,
            "segments": self.segments,
            "position_s": round(self.position_s, 3),
            "noise_floor_dbfs": self.classifier.noise_floor_dbfs,
        }

    # --- state machine -----------------------------------------------------------------------

    def _on_frame(self, frame: np.ndarray, events: list[Event]) -> None:
        voiced = self.classifier.classify(frame)
        self.frames += 1
        self.voiced_frames += voiced
        now = self._pos
        if not self._in_speech:
            if len(self._recent) == self.window:
                self._recent_voiced -= self._recent[0]
            self._recent.append(voiced)
            self._recent_voiced += voiced
            self._history.append(voiced)
            if len(self._recent) == self.window and self._recent_voiced >= self.needed:
                self._begin(now, events)
            return
        if voiced:
            self._last_voiced_end = now
            self._silence_run = 0
        else:
            self._silence_run += 1
        if self._silence_run >= self.silence_frames:
            self._end(self._last_voiced_end, "silence", events)
        elif now + self.frame - self._seg_start > self.max_samples:
            if self._silence_run == 0:
                self._cut(now, events)
            else:
                # Already in a pause: end there rather than start a segment of silence.
                self._end(self._last_voiced_end, "max_length", events)

    def _begin(self, now: int, events: list[Event]) -> None:
        f = self.frame
        flags = list(self._history)
        history_start = now - len(flags) * f
        first = flags.index(True, len(flags) - self.window)
        gap = 0
        for j in range(first - 1, -1, -1):
            if flags[j]:
                first, gap = j, 0
            else:
                gap += 1
                if gap > self.bridge_frames:
                    break
        last = len(flags) - 1 - flags[::-1].index(True)
        onset = history_start + first * f
        # Never before the audio already handed out, and never so early that the segment would
        # exceed max_segment_s at once (only possible when that is shorter than pre-roll + onset).
        start = max(onset - self.pre_roll, 0, self._prev_end, now + f - self.max_samples)
        self._open(start, onset, events)
        self._last_voiced_end = history_start + (last + 1) * f
        self._silence_run = len(flags) - 1 - last
        if self._silence_run >= self.silence_frames:
            self._end(self._last_voiced_end, "silence", events)

    def _open(self, start: int, onset: int, events: list[Event]) -> None:
        self._counter += 1
        self._seg_id = f"{self.prefix}-{self._counter}"
        self._seg_start = start
        self._seg_onset = onset
        self._in_speech = True
        events.append(SpeechStart(self._seg_id, start / self.sample_rate))

    def _cut(self, now: int, events: list[Event]) -> None:
        self._emit_end(now, now, "max_length", events)
        self._open(now, now, events)
        self._last_voiced_end = now
        self._silence_run = 0

    def _end(self, end: int, reason: str, events: list[Event]) -> None:
        self._emit_end(end, min(end + self.tail, self._pos), reason, events)
        self._in_speech = False
        self._recent.clear()
        self._history.clear()
        self._recent_voiced = 0
        self._silence_run = 0

    def _emit_end(self, end: int, audio_end: int, reason: str, events: list[Event]) -> None:
        start = self._seg_start
        samples = self._copy(start, audio_end)
        onset = min(max(self._seg_onset, start), end)
        level = rms_dbfs(samples[onset - start:end - start]) if end > onset else rms_dbfs(samples)
        sr = self.sample_rate
        events.append(SpeechEnd(self._seg_id, start / sr, end / sr, (end - start) / sr, level, samples, reason))
        self._prev_end = audio_end
        self.segments += 1

    def _copy(self, start: int, end: int) -> np.ndarray:
        """Copy absolute samples [start, end) out of the ring (they are still held there)."""
        cap = self.capacity
        a, length = start % cap, end - start
        if a + length <= cap:
            return self._ring[a:a + length].copy()
        return np.concatenate((self._ring[a:], self._ring[:length - (cap - a)]))
