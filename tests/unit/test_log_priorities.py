"""Log lines under journald: every level gets its syslog priority prefix on every line."""

from __future__ import annotations

import logging

from agent.ops.logs import JournalFormatter


def test_every_level_maps_to_its_syslog_priority_on_every_line() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")
    for level, prefix in ((logging.CRITICAL, "<3>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
                          (logging.INFO, "<6>"), (logging.DEBUG, "<7>")):
        record = logging.LogRecord("agent.x", level, __file__, 1, "first\nsecond", None, None)
        assert formatter.format(record).splitlines() == [f"{prefix}agent.x: first", f"{prefix}second"]
