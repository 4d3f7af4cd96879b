"""The inbox folder's worker, present while `inbox.enabled`, rebuilt when the inbox section changes.

`WorkerFactory` is the one build of an inbox worker: the inbox, or the microphone spool (kind
"mic", whose files are deleted once processed); both go through the same admission and runner.
`InboxFeed` owns the inbox's worker across config changes, so commands and `stats` hold this part
(`current`: the inbox now, or None while disabled) instead of asking the app for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from agent.errors import RequestError
from agent.jobs.admission import Admission
from agent.jobs.retry import Retries
from agent.jobs.runner import Runner
from agent.settings import InboxSettings
from agent.sources.inbox import Inbox
from agent.sources.inbox_worker import InboxWorker

#: How long running jobs of a replaced inbox worker may take to finish (a config change).
RESTART_GRACE_S = 30


@dataclass(frozen=True)
class WorkerFactory:
    admission: Admission
    runner: Runner
    job_event: Callable[..., None]
    batch_size: Callable[[], int]
    retries: Retries = field(default_factory=Retries)   # which failed files stay queued (agent/jobs/retry.py)
    on_folders: Callable[[str, str | None], None] = lambda kind, problem: None

    def __call__(self, settings: InboxSettings, kind: str) -> InboxWorker:
        return InboxWorker(settings, self.admission, self.runner, kind=kind, job_event=self.job_event,
                           batch_size=self.batch_size, keep_processed=kind != "mic", retries=self.retries,
                           on_folders=self.on_folders)


class InboxFeed:
    def __init__(self, settings: InboxSettings, make: Callable[[InboxSettings, str], Any]) -> None:
        self._make = make
        self.worker: InboxWorker | None = make(settings, "inbox") if settings.enabled else None

    @property
    def current(self) -> Inbox | None:
        """The inbox folder now (None while the inbox is disabled)."""
        worker = self.worker
        return worker.inbox if worker is not None else None

    def run_named(self, name: str, job_id: str, summarize: bool) -> dict[str, Any]:
        """A `transcribe` request naming a file in the inbox: the inbox's own claim, run and finish
        (InboxWorker.run_named); the record, or a coded error."""
        worker = self.worker
        if worker is None:
            raise RequestError("the inbox is disabled", code="bad_request")
        return worker.run_named(name, job_id, summarize)

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()

    def stop(self, grace_s: float) -> None:
        if self.worker is not None:
            self.worker.stop(grace_s=grace_s)

    def poke(self) -> None:
        if self.worker is not None:
            self.worker.poke()

    def reconfigure(self, settings: InboxSettings, changed: bool) -> list[str]:
        """New settings (`changed`: the inbox section differs); returns ["inbox"] when a running
        worker had to be replaced."""
        restarted: list[str] = []
        if changed and self.worker is not None:
            self.worker.stop(grace_s=RESTART_GRACE_S)
            self.worker = None
            restarted.append("inbox")
        if settings.enabled and self.worker is None:
            self.worker = self._make(settings, "inbox")
            self.worker.start()
        return restarted
