"""`request/restart`: stop as on SIGTERM, then come back, at most once a minute.

Under systemd the agent exits with RESTART_EXIT and the unit's `RestartForceExitStatus=75`
starts it again (`SuccessExitStatus=75`: a requested restart is not a failure). Elsewhere the
process replaces itself with the same command line (`os.execv`), keeping its pid, its standard
streams and its working folder. Either way the stop is the ordinary one (App.shutdown): running
jobs get the grace period, then their files stay claimed and are taken again on the next start.

The once-a-minute limit must hold across the restart it causes (a retained or repeated request
would otherwise restart the device in a loop), so the time of the last restart is kept in the
state folder, as wall-clock seconds; a stamp in the future (the clock was set back) does not block.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, NoReturn

from agent.durable import write_atomically

log = logging.getLogger(__name__)

#: sysexits EX_TEMPFAIL: "try again"; the unit restarts on it (RestartForceExitStatus=75).
RESTART_EXIT = 75
MIN_INTERVAL_S = 60.0
STAMP_NAME = "last-restart"


def under_systemd(environ: Mapping[str, str]) -> bool:
    """systemd sets INVOCATION_ID for every service it starts (and NOTIFY_SOCKET for Type=notify)."""
    return bool(environ.get("INVOCATION_ID") or environ.get("NOTIFY_SOCKET"))


class RestartGate:
    """At most one restart per MIN_INTERVAL_S, remembered in `<state_dir>/last-restart`."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self._stamp = state_dir / STAMP_NAME
        self._clock = clock

    def wait_s(self) -> float:
        """Seconds until a restart is allowed again (0: now)."""
        try:
            last = float(self._stamp.read_text(encoding="ascii").strip() or "nan")
        except (OSError, ValueError):
            return 0.0
        since = self._clock() - last
        if not since >= 0:   # a stamp in the future or unreadable (nan): the clock moved; allow
            return 0.0
        return max(0.0, MIN_INTERVAL_S - since)

    def take(self) -> None:
        """Record a restart now (before stopping, so the next run sees it)."""
        try:
            write_atomically(self._stamp, [f"{self._clock():.3f}\n".encode("ascii")], mode=0o600)
        except OSError as exc:   # a full disk must not keep the device from restarting
            log.warning("cannot record the restart time in %s: %s", self._stamp, exc)


def reexec() -> NoReturn:
    """Replace this process with a fresh run of the same command line (outside systemd)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
