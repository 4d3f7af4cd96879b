"""The default summarizer: pick the most informative sentences, no model at all.

Why: a Pi Zero 2W has 512 MB; an LLM competes with the speech engine for it. Frequency-based
sentence extraction costs microseconds and no memory, and keeps the transcript's own words
(it cannot hallucinate). Also home of `NoSummarizer` (engine "none") and `count_words`, which
the LLM engines use for the "short text is its own summary" rule.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from agent.engines.base import Summary
from agent.settings import SummarizerSettings

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
#: Unpunctuated transcripts (PocketSphinx writes none) are cut into pseudo-sentences this long.
CHUNK_WORDS = 20

STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being
below between both but by can can't could couldn't did didn't do does doesn't doing don't down during each
few for from further get got had hadn't has hasn't have haven't having he he'd he'll he's her here here's
hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself just
let's like me more most much must mustn't my myself no nor not now of off oh ok okay on once only or other
ought our ours ourselves out over own really right said same say says she she'd she'll she's should
shouldn't so some such than that that's the their theirs them themselves then there there's these they
they'd they'll they're they've thing things this those through to too um uh under until up us very was
wasn't we we'd we'll we're we've well were weren't what what's when when's where where's which while who
who's whom why why's will with won't would wouldn't yeah yes you you'd you'll you're you've your yours
yourself yourselves going gonna want wanna know think mean actually maybe
""".split())


def count_words(text: str) -> int:
    """Words as a listener would count them; the `min_words` rule of every summarizer uses it."""
    return len(_WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    """Sentences in order; unpunctuated text falls back to fixed-size word chunks.

    Without the fallback a PocketSphinx transcript would be one "sentence" and its own summary.
    """
    sentences = [part.strip() for part in _SENTENCE_END.split(text.strip()) if part and part.strip()]
    if len(sentences) <= 1 and not re.search(r"[.!?]", text):
        words = text.split()
        if len(words) > CHUNK_WORDS:
            return [" ".join(words[i:i + CHUNK_WORDS]) for i in range(0, len(words), CHUNK_WORDS)]
    return sentences


def _content_words(sentence: str) -> list[str]:
    words = (word.lower().replace("’", "'") for word in _WORD.findall(sentence))
    return [word for word in words if len(word) > 1 and word not in STOPWORDS]


def extract(text: str, max_sentences: int) -> str:
    """The `max_sentences` highest-scoring sentences, joined in their original order.

    A sentence scores the sum of its content words' frequencies (normalised by the most frequent
    word), divided by the square root of its length: long sentences are not favoured merely for
    being long, and one-word sentences do not win on a single frequent word.
    """
    sentences = split_sentences(text)
    if len(sentences) <= max_sentences:
        return " ".join(sentences)
    per_sentence = [_content_words(sentence) for sentence in sentences]
    frequency = Counter(word for words in per_sentence for word in words)
    if not frequency:
        return " ".join(sentences[:max_sentences])
    top = max(frequency.values())

    def score(index: int) -> float:
        words = per_sentence[index]
        if not words:
            return 0.0
        return sum(frequency[word] / top for word in words) / math.sqrt(len(words))

    ranked = sorted(range(len(sentences)), key=lambda i: (-score(i), i))
    keep = sorted(ranked[:max_sentences])
    return " ".join(sentences[i] for i in keep)


class ExtractiveSummarizer:
    """Frequency-based extractive summaries; the default engine."""

    name = "extractive"

    def __init__(self, settings: SummarizerSettings) -> None:
        self.settings = settings

    def load(self) -> None:
        """Nothing to load: the engine is pure Python."""

    def summarize(self, text: str) -> Summary:
        text = text.strip()
        if count_words(text) < self.settings.min_words:
            return Summary(text, self.name)
        return Summary(extract(text, self.settings.max_sentences), self.name)

    def close(self) -> None:
        """Nothing to release."""


class NoSummarizer:
    """Engine "none": an empty summary, which tells the pipeline not to publish one."""

    name = "none"

    def __init__(self, settings: SummarizerSettings) -> None:
        self.settings = settings

    def load(self) -> None:
        """Nothing to load."""

    def summarize(self, text: str) -> Summary:
        return Summary("", self.name)

    def close(self) -> None:
        """Nothing to release."""
