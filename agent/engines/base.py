"""The two small interfaces every engine implements, and the values they exchange.

The pipeline only knows these; which engine runs is a config choice. Engines are built
lazily (heavy imports inside `load`) so that importing the agent stays cheap on a Pi Zero 2W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from agent.audio.clip import Audio


@dataclass(frozen=True)
class Transcript:
    text: str
    engine: str
    language: str | None = None


#: What a transcriber that decodes in steps calls as it goes: the fraction of the audio done
#: (0..1) and the text so far (agent.jobs.progress publishes it, rate-limited). Engines that
#: support it say so with `reports_progress = True` and take `progress=` in `transcribe`.
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Summary:
    text: str
    engine: str


def transcribe_each(transcribe: Callable[[Audio], Transcript], audios: list[Audio]) -> list[Transcript | Exception]:
    """`transcribe_batch` for engines that gain nothing from batching: one call per input, a
    failing input fails alone, but an engine that is unavailable fails the whole batch."""
    from agent.errors import EngineError

    results: list[Transcript | Exception] = []
    for audio in audios:
        try:
            results.append(transcribe(audio))
        except EngineError as exc:
            if exc.code == "engine_unavailable":
                raise
            results.append(exc)
    return results


class Transcriber(Protocol):
    name: str

    def load(self) -> None:
        """Load the model and run one tiny inference (warm-up); may take seconds."""

    def transcribe(self, audio: Audio) -> Transcript:
        """Raise `agent.errors.EngineError` (engine_error / engine_timeout / engine_unavailable)."""

    def transcribe_batch(self, audios: list[Audio]) -> list[Transcript | Exception]:
        """Several at once where the engine gains from it; one result or error per input, in order."""

    def close(self) -> None:
        """Release models and stop child processes."""


class Summarizer(Protocol):
    name: str

    def load(self) -> None: ...

    def summarize(self, text: str) -> Summary:
        """Raise `agent.errors.EngineError` on failure."""

    def close(self) -> None: ...
