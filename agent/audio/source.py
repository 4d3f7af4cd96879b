"""The contract every audio source follows, shared by the sources and the code that reads them.

Kept apart from the concrete sources in `agent.audio.capture` so that device handling
(`agent.audio.devices`) and rate conversion (`agent.audio.stream_resample`) can raise and
honour the same errors without importing the sources themselves.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from agent.errors import AgentError

TARGET_RATE = 16000


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
