"""Several clips in one whisper.cpp run: joined with silence into packs, then split by timestamps.

Why: whisper.cpp encodes at least a 10 s window per input (see whisper_cpp.audio_ctx_for), so ten
short clips as ten inputs cost ten windows; joined into packs of a few clips they share windows,
and whisper makes fewer errors with neighbours around a short clip. Splitting back is the risky
part, because whisper's segment ends are loose (they run through gaps and silent inputs) and it
often runs short commands into one sentence. So a segment goes to the input whose *sound* it
covers, a merged segment is cut after the punctuation token nearest each gap, and any input
whose split is doubtful is reported so that the caller transcribes it again by itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from agent.audio.clip import SAMPLE_RATE

if TYPE_CHECKING:
    import numpy as np

# -- concatenated batches -----------------------------------------------------------------------
GAP_S = 1.0               # silence between inputs; longer gaps did not stop whisper from running short
                          # commands into one sentence (2 s: still one segment for 9 of them), and
                          # the punctuation cut below handles that at 1 s
TAIL_S = 0.5              # silence after the last input. whisper.cpp encodes one more window when over
                          # 1 s is left after its last timestamp: with 1 s there, most packs paid a
                          # second encoder pass for [BLANK_AUDIO] (and once, with 5 beams, 224 tokens
                          # of "..."); with 0.5 s none did, and the word error rate was no higher
                          # in 7 of 8 pack sizes x beam settings measured
PACK_MAX_S = 18.0         # longest pack (inputs, gaps and tail): one encoder window of about 20 s.
                          # 20 espeak sentences of 1-6 s, 10 per batch, 5 beams, against one run each:
                          # packs of 8 / 13 / 18 / 24 s took 1.42 / 1.44 / 1.53 / 1.11x less time,
                          # word error rate 0.08 / 0.10 / 0.03 / 0.03 against 0.20
_FRAME_S = 0.02
_VOICED_RMS = 32768 * 10 ** (-45 / 20)  # a 20 ms frame above -45 dBFS counts as sound
_MIN_VOICED_S = 0.3       # this much of an input's sound inside a segment makes the segment its
_CUT_TOLERANCE_S = 0.5    # the measured cut commas sat inside the gap or on its edge; room for jitter
_PUNCTUATION = frozenset(".,?!;:\u2026")
_MARKERS = ("[BLANK_AUDIO]",)


@dataclass(frozen=True)
class Token:
    """One text token of a segment: where whisper.cpp puts its start, and its text (whose bytes
    may be half a UTF-8 character, kept as surrogate escapes until tokens are joined)."""

    start_s: float
    text: str


@dataclass(frozen=True)
class Segment:
    """One segment of whisper.cpp's JSON output, in seconds from the start of the run's audio."""

    start_s: float
    end_s: float
    text: str
    tokens: tuple[Token, ...] = ()


# -- concatenation and splitting -----------------------------------------------------------------


def join_with_gaps(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The inputs one after another with GAP_S of silence between and TAIL_S after the last,
    and each input's (start_s, end_s) in the result."""
    import numpy as np

    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.int16)
    chunks: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    position = 0
    for i, part in enumerate(parts):
        if i:
            chunks.append(gap)
            position += len(gap)
        chunks.append(np.asarray(part, dtype=np.int16))
        spans.append((position / SAMPLE_RATE, (position + len(part)) / SAMPLE_RATE))
        position += len(part)
    chunks.append(np.zeros(int(TAIL_S * SAMPLE_RATE), dtype=np.int16))
    return np.concatenate(chunks), spans


def voiced_frames(samples: np.ndarray) -> np.ndarray:
    """One flag per 20 ms frame: does it hold sound (RMS above -45 dBFS)?

    Why: whisper's segment ENDS are loose (a segment usually runs on to the next one's start,
    through the gap and any silent input), so plain time overlap can hand a sentence to a silent
    neighbour. Counting only frames with sound in them cannot.
    """
    import numpy as np

    frame = int(_FRAME_S * SAMPLE_RATE)
    count = len(samples) // frame
    blocks = np.asarray(samples[: count * frame], dtype=np.float32).reshape(count, frame)
    return np.sqrt(np.mean(blocks * blocks, axis=1)) > _VOICED_RMS


def _clean(text: str) -> str:
    """Text read with surrogate escapes back to proper text (a broken character becomes U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").strip()


def _is_special(text: str) -> bool:
    return text.startswith("[_") and text.endswith("]")  # [_BEG_], [_TT_284], ...


def parse_segments(raw: bytes) -> list[Segment]:
    """Segments of whisper.cpp's `-ojf` file: `transcription[i].offsets.from/to` (ms), `text`,
    and `tokens[j].offsets.from` / `tokens[j].text` for the text tokens.

    Raises ValueError when the file is not that shape. Empty segments and markers are dropped.
    """
    try:
        items = json.loads(raw.decode("utf-8", "surrogateescape"))["transcription"]
        segments = [
            Segment(float(item["offsets"]["from"]) / 1000, float(item["offsets"]["to"]) / 1000,
                    _clean(str(item["text"])),
                    tuple(Token(float(t["offsets"]["from"]) / 1000, str(t["text"]))
                          for t in item.get("tokens", ()) if not _is_special(str(t["text"]))))
            for item in items
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not whisper.cpp JSON output: {exc!r}") from exc
    return [s for s in segments if s.text and s.text not in _MARKERS]


def _voiced_inside(segment: Segment, span: tuple[float, float], voiced: np.ndarray) -> int:
    """How many of an input's sounding frames lie inside the segment."""
    first = max(0, math.floor((segment.start_s - span[0]) / _FRAME_S))
    last = min(len(voiced), math.ceil((segment.end_s - span[0]) / _FRAME_S))
    return int(voiced[first:last].sum()) if last > first else 0


def _overlap(segment: Segment, span: tuple[float, float]) -> float:
    """Time overlap with the input's span widened by half a gap on each side."""
    start, end = span[0] - GAP_S / 2, span[1] + GAP_S / 2
    return max(0.0, min(segment.end_s, end) - max(segment.start_s, start))


def _sound_bounds(span: tuple[float, float], voiced: np.ndarray) -> tuple[float, float]:
    """Start of the input's first sounding frame and end of its last, in run time."""
    frames = [i for i, on in enumerate(voiced) if on]
    if not frames:
        return span
    return span[0] + frames[0] * _FRAME_S, span[0] + (frames[-1] + 1) * _FRAME_S


def _outside(t: float, gap: tuple[float, float]) -> float:
    return max(0.0, gap[0] - t, t - gap[1])


def split_segment(segment: Segment, bounds: Sequence[tuple[float, float]]) -> list[str] | None:
    """The segment's text cut into one piece per input whose sound it holds, or None if unsure.

    Why: whisper runs short utterances into one sentence ("Open the front door, close the garage,
    play some music.") even across 2 s of silence, but puts a punctuation token where each pause
    was. Between two inputs the cut goes after the punctuation token whose time is nearest the
    silence between their sounds; none within _CUT_TOLERANCE_S of it means unsure.
    """
    tokens = segment.tokens
    cuts: list[int] = []
    for before, after in zip(bounds, bounds[1:]):
        gap = (before[1], after[0])
        candidates = [k for k, token in enumerate(tokens)
                      if k > (cuts[-1] if cuts else -1) and token.text.strip()
                      and set(token.text.strip()) <= _PUNCTUATION
                      and _outside(token.start_s, gap) <= _CUT_TOLERANCE_S]
        if not candidates:
            return None
        cuts.append(min(candidates, key=lambda k: (_outside(tokens[k].start_s, gap), -k)))
    edges = [0, *(k + 1 for k in cuts), len(tokens)]
    pieces = [_clean("".join(t.text for t in tokens[a:b])) for a, b in zip(edges, edges[1:])]
    return [p.replace(_MARKERS[0], "").strip().rstrip(",;:").strip() for p in pieces]


def assign_segments(segments: Sequence[Segment], spans: Sequence[tuple[float, float]],
                    voiced: Sequence[np.ndarray]) -> tuple[list[str], set[int]]:
    """Each input's text, and the inputs whose text is doubtful and must be redone alone.

    A segment holding at least _MIN_VOICED_S of sound of one input is that input's; of several
    inputs, it is cut at punctuation (`split_segment`) or, failing that, all of them are
    doubtful. A segment over no input's sound (loose timestamps) goes to the input with the
    most sound in it, then the largest widened overlap. An input with that much sound but no
    text is doubtful too: whisper skipped it, and alone it may not.
    """
    least = math.ceil(_MIN_VOICED_S / _FRAME_S)
    texts: list[list[str]] = [[] for _ in spans]
    doubtful: set[int] = set()
    for segment in segments:
        inside = [_voiced_inside(segment, span, v) for span, v in zip(spans, voiced)]
        holders = [i for i, n in enumerate(inside) if n >= least]
        if len(holders) > 1:
            pieces = split_segment(segment, [_sound_bounds(spans[i], voiced[i]) for i in holders])
            if pieces is None:
                doubtful.update(holders)
                continue
            for i, piece in zip(holders, pieces):
                if piece:
                    texts[i].append(piece)
            continue
        best = holders[0] if holders else max(range(len(spans)),
                                              key=lambda i: (inside[i], _overlap(segment, spans[i])))
        texts[best].append(segment.text)
    for i, v in enumerate(voiced):
        if not texts[i] and int(v.sum()) >= least:
            doubtful.add(i)
    return [" ".join(t) for t in texts], doubtful


def packs_of(durations: Sequence[float]) -> tuple[list[int], list[list[int]]]:
    """(empty, packs): empty inputs need no run; a pack joins two or more inputs, in order, into at
    most PACK_MAX_S of audio (gaps and tail included). Any other input runs by itself."""
    empty = [i for i, d in enumerate(durations) if d <= 0]
    fits = PACK_MAX_S - TAIL_S
    packs: list[list[int]] = []
    current: list[int] = []
    length = 0.0
    for i, d in enumerate(durations):
        if d <= 0:
            continue
        added = d + (GAP_S if current else 0.0)
        if current and length + added > fits:
            packs.append(current)
            current, added = [], d
            length = 0.0
        current.append(i)
        length += added
    packs.append(current)
    return empty, [p for p in packs if len(p) > 1]
