"""Log line format: plain with a timestamp on a terminal or file, syslog priorities under journald.

Under systemd, standard error goes to the journal, which stamps every line itself and reads a
leading `<N>` as the line's syslog priority (SyslogLevelPrefix=, on by default). Without the
prefix every line is priority 6 (info), so `journalctl -p err` finds nothing, and the agent's own
timestamp only repeats the journal's. systemd sets JOURNAL_STREAM to the `device:inode` of the
stream it connected; the prefix is used only when standard error *is* that stream, so a shell
started from a service (which inherits the variable) still gets readable lines.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

# syslog(3) priorities: err, warning, info, debug (CRITICAL is logged as err too: crit would page).
_PRIORITY = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python log level."""
    for floor, priority in _PRIORITY:
        if levelno >= floor:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """`<priority>name: message`, with the prefix on every line (a traceback is several journal entries)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when `stream` is the journal stream systemd announced in JOURNAL_STREAM (`dev:inode`)."""
    announced = environ.get("JOURNAL_STREAM", "")
    device, _, inode = announced.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


def configure_logging(level: str, *, stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Send the agent's log to `stream` (standard error) in the format its reader expects."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream, os.environ if environ is None else environ):
        handler.setFormatter(JournalFormatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
