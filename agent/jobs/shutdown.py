"""Shutdown grace: running jobs get jobs.shutdown_grace_s to finish, then are abandoned.

On SIGTERM no new work is taken (the job slot's limit drops to 0: requests are answered busy,
inbox and spool files wait on disk). Jobs still running after the grace are abandoned: their
files stay claimed in .processing/ (taken again on the next start), and nothing they do
afterwards is stored or published (`hold`, a guard on the event sink).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from agent.jobs.slot import JobSlot

log = logging.getLogger(__name__)


class ShutdownGrace:
    def __init__(self, slot: JobSlot, grace_s: float, *, beat: Callable[[], None],
                 say: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 poll_s: float = 0.05) -> None:
        """`beat` keeps the watchdog fed while waiting; `say` tells systemd (STATUS=) what we wait for."""
        self._slot = slot
        self._grace_s = grace_s
        self._beat, self._say, self._clock, self._poll_s = beat, say, clock, poll_s
        self._deadline: float | None = None
        self.abandoned = threading.Event()   # set when running jobs outlive the grace

    def reconfigure(self, settings: Any) -> None:
        self._grace_s = settings.jobs.shutdown_grace_s

    def begin(self) -> None:
        """The grace starts now; no job slot is handed out from here on."""
        self._deadline = self._clock() + self._grace_s
        self._slot.set_limit(0)

    def left(self) -> float:
        if self._deadline is None:
            return 0.0
        return max(0.0, self._deadline - self._clock())

    def wait(self) -> None:
        """Wait for running jobs until the grace is over; abandon those still running."""
        grace, slot = self._grace_s, self._slot
        if slot.running:
            log.info("waiting up to %g s for %d running job(s)", grace, slot.running)
            self._say(f"stopping: waiting up to {grace:g} s for {slot.running} running job(s)")
        while slot.running > 0 and self.left() > 0:
            self._beat()
            time.sleep(self._poll_s)
        if slot.running > 0:
            self.abandoned.set()
            log.warning("%d job(s) still running after %g s: their files stay claimed and are taken again "
                        "on the next start", slot.running, grace)

    def hold(self, event: str, body: dict[str, Any]) -> None:
        """A job thread that outlived the grace stops here for good (the process is exiting): its
        file must stay claimed rather than be finished as failed when the engines are closed.
        Only job threads (daemon threads emitting a job's progress) are held, never the main
        thread or a pool worker that the interpreter joins at exit."""
        thread = threading.current_thread()
        progress = event in ("transcript", "summary") or (
            event == "job" and body.get("state") in ("running", "done", "failed"))
        if self.abandoned.is_set() and progress and thread.daemon and thread is not threading.main_thread():
            log.info("%s: abandoned at shutdown; its work is taken again on the next start", thread.name)
            threading.Event().wait()
