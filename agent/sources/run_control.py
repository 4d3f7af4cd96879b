"""`pause` / `resume` and the microphone switch (`listening`): what they change, and who looks again.

Pause stops the work the device takes on its own (inbox, microphone, fleet jobs), not the answers
it owes; the microphone switch closes the microphone alone. Either is pushed to the run state (what
`state` reports) and admission (what decides), then every source concerned is woken, and the
command waits briefly until the microphone is as wanted so the answer matches the retained state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from agent.jobs.admission import Admission
from agent.jobs.run_state import RunState

if TYPE_CHECKING:   # annotations only: the fleet worker (requests) is imported by the app when built
    from agent.sources.fleet import FleetWorker
    from agent.sources.inbox_feed import InboxFeed
    from agent.sources.listening import Listening

log = logging.getLogger(__name__)


class RunControl:
    def __init__(self, run: RunState, admission: Admission, *, inbox: InboxFeed, listening: Listening,
                 fleet: FleetWorker, on_change: Callable[[], None]) -> None:
        """`on_change` republishes the retained state."""
        self._run, self._admission = run, admission
        self._inbox, self._listening, self._fleet, self._on_change = inbox, listening, fleet, on_change

    def set_paused(self, paused: bool) -> None:
        self._run.paused = paused
        self._admission.set_paused(paused)
        log.info("%s", "paused: no new work is taken" if paused else "resumed")
        self.look_again(settle=True)

    def set_listening(self, on: bool) -> None:
        """The microphone alone (Home Assistant's switch): inbox, requests and fleet jobs go on."""
        self._run.mic_off = not on
        log.info("microphone switched %s", "on" if on else "off")
        self._listening.poke()
        self._listening.settle()
        self._on_change()

    def look_again(self, *, settle: bool = False) -> None:
        """Pause or a memory level changed: every source looks again whether to take work (`settle`:
        wait until the microphone is as wanted), the retained state shows it (`memory_level` is what
        Home Assistant shows), and the fleet worker leaves or rejoins its group at once."""
        self._inbox.poke()
        self._listening.poke()
        if settle:
            self._listening.settle()
        self._on_change()
        self._fleet.poke()
