"""A meeting transcript for summarizer tests: informative sentences mixed with filler, so a
summary that keeps the plan and drops the chatter can be told from one that does not.
"""

from __future__ import annotations

TRANSCRIPT = (
    "Good morning everyone, thanks for joining the weekly planning call. "
    "The garden project needs raised beds, seeds and a watering system before the end of April. "
    "Anna will order the seeds for the garden project today. "
    "Um, sorry, my coffee is getting cold. "
    "Ben will build the raised beds for the garden this weekend. "
    "See you all next week."
)
