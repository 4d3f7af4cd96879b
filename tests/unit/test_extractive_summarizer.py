"""The extractive summarizer and the no-op one, in process."""

from __future__ import annotations

from agent.engines import make_summarizer
from agent.engines.extractive import ExtractiveSummarizer, NoSummarizer, count_words, split_sentences
from agent.settings import SummarizerSettings
from tests.support.summaries import TRANSCRIPT


def test_extractive_picks_informative_sentences_in_original_order() -> None:
    summarizer = ExtractiveSummarizer(SummarizerSettings(max_sentences=2, min_words=5))
    summary = summarizer.summarize(TRANSCRIPT)
    assert summary.engine == "extractive"
    kept = split_sentences(summary.text)
    assert len(kept) == 2
    assert all("garden" in sentence for sentence in kept)
    assert "coffee" not in summary.text and "Good morning" not in summary.text
    positions = [TRANSCRIPT.index(sentence) for sentence in kept]
    assert positions == sorted(positions)


def test_extractive_returns_short_text_as_is() -> None:
    summarizer = ExtractiveSummarizer(SummarizerSettings(min_words=12))
    text = "Turn on the kitchen lights. Then start the kettle."
    assert count_words(text) < 12
    assert summarizer.summarize(f"  {text}\n").text == text


def test_extractive_keeps_everything_when_there_are_few_sentences() -> None:
    summarizer = ExtractiveSummarizer(SummarizerSettings(max_sentences=3, min_words=1))
    text = "The meeting moved to Tuesday. Bring the budget figures."
    assert summarizer.summarize(text).text == text


def test_extractive_chunks_unpunctuated_transcripts() -> None:
    """PocketSphinx writes no punctuation; the whole transcript must not become the summary."""
    words = ("the pump in the greenhouse failed again so the tomatoes need water by hand "
             "until the new pump arrives on friday and then we test the pump twice a day "
             "also the cat sat on the mat for a while and looked at birds outside the window "
             "which was nice but not important for anything at all today really").split()
    text = " ".join(words)
    summary = ExtractiveSummarizer(SummarizerSettings(max_sentences=1, min_words=5)).summarize(text)
    assert 0 < count_words(summary.text) < len(words)
    assert "pump" in summary.text


def test_no_summarizer_returns_empty_summary() -> None:
    summary = make_summarizer(SummarizerSettings(engine="none")).summarize(TRANSCRIPT)
    assert summary.text == "" and summary.engine == "none"
    assert isinstance(make_summarizer(SummarizerSettings()), ExtractiveSummarizer)
    assert isinstance(make_summarizer(SummarizerSettings(engine="none")), NoSummarizer)
