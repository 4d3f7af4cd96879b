"""What a command handler is: a small function from a typed request to data, or a typed error.

A request carries `services`, the frozen record of what commands may read and do (built once by
agent.app); handlers hold the commands' logic and never see the App itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from agent.errors import RequestError
from agent.settings import DEVICE, InboxSettings, Settings

if TYPE_CHECKING:   # annotations only: importing handlers stays cheap
    from agent.config.store import ConfigStore
    from agent.engines.runtime import Engines
    from agent.jobs.pipeline import Pipeline
    from agent.jobs.run_state import RunState
    from agent.jobs.slot import JobSlot


class InboxAccess(Protocol):
    """The inbox folder as `stats` uses it (agent.sources.inbox.Inbox)."""

    path: Path
    settings: InboxSettings

    def waiting_count(self) -> int: ...


class MonitorView(Protocol):
    """The memory level and budget (agent.ops.monitor.Monitor)."""

    @property
    def level(self) -> str: ...
    def budget(self) -> dict[str, Any]: ...


class TelemetryView(Protocol):
    def collect(self, extra: dict[str, Any]) -> dict[str, Any]: ...


class OutboxView(Protocol):
    count: int
    size_bytes: int
    stored: int
    dropped: int


class PublisherView(Protocol):
    published: int


class RequestCounts(Protocol):
    requests: int
    errors: int
    busy: int


class MicrophoneView(Protocol):
    """Live listening (agent.sources.listening.Listening)."""

    @property
    def present(self) -> bool: ...   # a microphone (or a test source) is configured
    @property
    def on(self) -> bool: ...        # capturing now (`listening` in the state)
    def stats(self) -> dict[str, Any]: ...


class InboxFeedView(Protocol):
    """The inbox folder's worker, replaced on a config change (agent.sources.inbox_feed.InboxFeed)."""

    @property
    def current(self) -> InboxAccess | None: ...   # None while the inbox is disabled
    def run_named(self, name: str, job_id: str, summarize: bool) -> dict[str, Any]: ...   # transcribe a `file`


@dataclass(frozen=True)
class Services:
    """Everything a command may read or do, built once by the composition root (agent.app).

    Handlers see these parts and narrow actions, never the App: a command cannot reach a part
    it was not given, and a test can hand a handler fakes. Nothing here is a getter on the App:
    a value that changes while running is read from the part that owns it (the current settings
    from the store, paused from the run state, the inbox from its feed). Parts from layers above
    handlers (sources, ops, mqtt) are typed by Protocols here, so handlers import nothing above
    agent.jobs.
    """

    store: ConfigStore                          # `store.settings`: the settings in force
    pipeline: Pipeline
    slot: JobSlot
    engines: Engines
    monitor: MonitorView
    telemetry: TelemetryView
    outbox: OutboxView
    publisher: PublisherView
    alerts: Mapping[str, Mapping[str, Any]]     # kind -> current alert body (kept current by its owner)
    run: RunState                               # paused, rejected, uptime
    microphone: MicrophoneView
    inbox: InboxFeedView
    requests: RequestCounts
    fleet_stats: Callable[[], dict[str, Any]]
    vad_cache_stats: Callable[[], dict[str, int]]
    apply: Callable[[Settings], list[str]]      # a validated config, live; returns what restarted
    set_paused: Callable[[bool], None]
    set_listening: Callable[[bool], None]
    # operations (agent/ops/restart.py): seconds until a restart is allowed; restart now (after the answer)
    restart_wait_s: Callable[[], float]
    restart: Callable[[], None]
    set_log_level: Callable[[str], None]        # the running level, until a restart or a config change of it


@dataclass(frozen=True)
class Request:
    command: str
    body: dict[str, Any]
    transaction: str | None
    services: Services
    job_id: str | None = None
    scope: str = DEVICE     # FLEET when it came on <prefix>/all/request/...: one publish, every device


@dataclass(frozen=True)
class Command:
    """A command name bound to its handler.

    `fields` maps each accepted body field to (accepted types, required); anything else in the
    body is refused as bad_request so typos do not pass silently. `heavy` commands run under
    the job slot and may be answered busy or memory_pressure. `after` runs once the answer has
    reached the broker (restart: the answer must go out before the connection does).
    """

    name: str
    run: Callable[[Request], Any]
    fields: dict[str, tuple[tuple[type, ...], bool]] = field(default_factory=dict)
    heavy: bool = False
    after: Callable[[Request, Any], None] | None = None

    def validate(self, body: dict[str, Any]) -> None:
        for key in body:
            if key != "transaction" and key not in self.fields:
                raise RequestError(f"unknown field '{key}'", code="bad_request", field=key)
        for key, (types, required) in self.fields.items():
            if key not in body:
                if required:
                    raise RequestError(f"missing field '{key}'", code="bad_request", field=key)
                continue
            value = body[key]
            if isinstance(value, bool) and bool not in types:
                raise RequestError(f"field '{key}' must be {_names(types)}", code="bad_request", field=key)
            if not isinstance(value, types):
                raise RequestError(f"field '{key}' must be {_names(types)}", code="bad_request", field=key)


def _names(types: tuple[type, ...]) -> str:
    words = {dict: "an object", str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "a list"}
    return " or ".join(words.get(t, t.__name__) for t in types)
