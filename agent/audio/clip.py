"""Decoded audio as every stage after the decoder sees it: 16 kHz mono int16 samples.

It lives with the audio code (the decoders produce it) rather than with the engines that consume
it, so the audio stage never imports the engine stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy (15 MB resident) loads with the first audio, not with the agent
    import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Audio:
    """Decoded speech: 16 kHz mono int16 samples.

    `path` is set when a file on disk already holds exactly these samples as a 16 kHz mono
    16-bit WAV, so a command-line engine can read it directly instead of being handed a copy.
    """

    samples: np.ndarray
    path: Path | None = None

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE
