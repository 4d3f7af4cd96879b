"""Live listening as one part: the capture thread and the spool worker that takes its segments.

A capture thread (agent/sources/listener.py) turns speech into `event/vad` and WAV segments in
the spool folder; a second inbox worker (kind "mic") takes them through the same admission and
runner as inbox files and deletes each once processed. Pause, critical memory or the `listening`
command close the microphone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from agent.audio.vad_cache import VadCache
from agent.jobs.admission import Admission
from agent.jobs.run_state import RunState
from agent.settings import InboxSettings, Settings
from agent.sources.inbox_feed import RESTART_GRACE_S
from agent.sources.inbox_worker import InboxWorker, spool_settings


class Listening:
    """The listener and its spool worker (kept while the spool folder stays the same).

    `board` raises and clears the `capture` alert; `on_change` republishes the retained state.
    """

    def __init__(self, settings: Settings, *, source: dict[str, Any] | None, run: RunState,
                 admission: Admission, make_worker: Callable[[InboxSettings, str], InboxWorker],
                 emit: Callable[[str, dict], None], on_change: Callable[[], None], board: Any,
                 cache: VadCache, divert: Callable[[Any], bool] | None = None) -> None:
        self._settings = settings
        self._divert = divert
        self._source = source
        self._run, self._admission, self._make_worker = run, admission, make_worker
        self._emit, self._on_change, self._board, self._cache = emit, on_change, board, cache
        self.listener: Any = None
        self.spool_worker: InboxWorker | None = None
        self._build()

    # --- what commands and the retained state read ---------------------------------------

    @property
    def present(self) -> bool:
        """A microphone (or a test source) is configured."""
        return self.listener is not None

    @property
    def on(self) -> bool:
        """Capturing right now (`listening` in the retained state)."""
        listener = self.listener
        return listener is not None and listener.active and not self._run.paused

    def wanted(self) -> bool:
        """The microphone is open while work may be taken (admission) and `listening` did not close it."""
        return self._admission.open() and not self._run.mic_off

    def stats(self) -> dict[str, Any]:
        listener, worker = self.listener, self.spool_worker
        stats: dict[str, Any] = listener.stats() if listener is not None else {"state": "off"}
        if worker is not None:
            stats["spool_waiting"] = worker.inbox.waiting_count()
        return stats

    # --- lifecycle -----------------------------------------------------------------------

    def _spool_dir(self) -> Path:
        s = self._settings
        return Path(s.listen.spool_dir or Path(s.state_dir) / "spool")

    def _build(self) -> None:
        s = self._settings
        spool = self._spool_dir()
        if not (s.listen.enabled or self._source):
            return
        if self.spool_worker is None or self.spool_worker.inbox.path != spool:
            self.spool_worker = self._make_worker(spool_settings(s.inbox, spool), "mic")
        from agent.sources.listener import Listener   # numpy, the VAD: only when listening
        self.listener = Listener(s.listen, s.vad, spool, source=self._source, emit=self._emit,
                                 wanted=self.wanted, on_change=self._on_change, raise_alert=self._board.raise_,
                                 clear_alert=self._board.clear, cache=self._cache, divert=self._divert)

    def start(self, start_spool: bool = True) -> None:
        if start_spool and self.spool_worker is not None:
            self.spool_worker.start()
        if self.listener is not None:
            self.listener.start()

    def stop(self) -> None:
        """Running jobs have had their grace already (agent/jobs/shutdown.py)."""
        if self.listener is not None:
            self.listener.stop()
        if self.spool_worker is not None:
            self.spool_worker.stop(grace_s=0)

    def restart(self, settings: Settings) -> list[str]:
        """`listen` or `vad` changed: a new listener; the spool worker only if its folder moved."""
        self._settings = settings
        was_running = self.listener is not None
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        self._cache.max_entries = settings.vad.cache_size
        old_spool = self.spool_worker
        self._build()
        if old_spool is not None and self.spool_worker is not old_spool:
            old_spool.stop(grace_s=RESTART_GRACE_S)
        self.start(start_spool=self.spool_worker is not old_spool)
        self._on_change()
        return ["listen"] if was_running or self.listener is not None else []

    def poke(self) -> None:
        """Paused, resumed, memory level changed: the listener and the spool worker look again."""
        if self.listener is not None:
            self.listener.poke()
        if self.spool_worker is not None:
            self.spool_worker.poke()

    def settle(self, timeout_s: float = 1.5) -> None:
        """Wait (briefly, on the control thread) until the microphone is open or closed as wanted,
        so an answer says what the retained state says a moment later. The capture thread looks
        again after each read: 100 ms from a microphone, up to 1 s from a silent pipe."""
        listener = self.listener
        deadline = time.monotonic() + timeout_s
        while (listener is not None and listener.active != self.wanted()
               and listener.state in ("starting", "listening", "paused") and time.monotonic() < deadline):
            time.sleep(0.02)
