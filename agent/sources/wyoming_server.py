"""Home Assistant Assist over Wyoming: one thread with its own asyncio loop, one listener per role.

    stt_port  -> the speech-to-text service (agent/sources/wyoming_asr.py)
    port      -> the satellite, when a microphone is configured (agent/sources/wyoming_satellite.py)

Wyoming has no authentication, so the listeners bind to `wyoming.bind` (loopback unless the local
file says otherwise), a client whose address is not in `wyoming.allow` is closed at once, every
frame is bounded before it is read (agent/sources/wyoming_frames.py), and each role serves one
Home Assistant connection at a time. The loop is separate from MQTT's thread and never waits on
a job: `describe` and `ping` are answered from it at once while a transcription runs in a worker
thread. A new satellite connection replaces the old one (Home Assistant reconnecting after its
restart finds the device at once, whatever became of the old socket); a connection silent for
`IDLE_S` is closed, unless its session is busy (a long transcription Home Assistant waits for).
Disconnects and refusals are logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from typing import Any, Callable

from agent.sources.wyoming_frames import MAX_HEADER_BYTES, FrameError, read_event, write_event

log = logging.getLogger(__name__)

IDLE_S = 60.0          # Home Assistant pings a satellite every few seconds and streams STT audio steadily
WRITE_TIMEOUT_S = 5.0
LOG_EVERY_S = 60.0


async def in_thread(work: Callable[[], Any], name: str) -> Any:
    """`work()` in a thread of its own, awaited without blocking the loop. Unlike the loop's
    executor, a result that arrives after the loop closed (a job finishing during shutdown) is
    dropped quietly instead of logging a traceback."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not done.done():
            done.set_result(value) if ok else done.set_exception(value)

    def run() -> None:
        try:
            outcome = (True, work())
        except BaseException as exc:   # handed to the awaiting coroutine
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:
            pass   # the loop is closed: nobody waits for this any more

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


class RateLimitedLog:
    """At most one line per `every_s`; the next one says how many were left out."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self._every_s = every_s
        self._last = -float("inf")
        self._left_out = 0

    def info(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._every_s:
            self._left_out += 1
            return
        self._last = now
        suffix = f" ({self._left_out} more like this in the last minute)" if self._left_out else ""
        self._left_out = 0
        log.info(message + suffix, *args)


class Connection:
    """One client connection of a role; `send` is safe from any coroutine of the loop."""

    def __init__(self, role: str, peer: str, writer: asyncio.StreamWriter) -> None:
        self.role, self.peer, self.writer = role, peer, writer
        self.task: asyncio.Task | None = None

    async def send(self, event: Any) -> bool:
        """False when the peer is gone (the read loop sees the end and cleans up)."""
        try:
            await asyncio.wait_for(write_event(event, self.writer), WRITE_TIMEOUT_S)
            return True
        except (ConnectionError, OSError, asyncio.TimeoutError, RuntimeError):
            return False

    def close(self) -> None:
        try:
            self.writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass


class AllowList:
    def __init__(self, entries: list[str]) -> None:
        self._networks = [ipaddress.ip_network(e, strict=False) for e in entries]

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)


class WyomingServer:
    """`sessions` maps a role name to (port, factory); the factory makes a session for a connection:
    an object with `async handle(event)`, `info()` (the `info` event), `busy` and `closed()`."""

    def __init__(self, *, bind: str, allow: list[str], sessions: dict[str, tuple[int, Callable[[Connection], Any]]],
                 advertise: Callable[[dict[str, int]], Any] | None = None) -> None:
        self._bind = bind
        self._allow = AllowList(allow)
        self._sessions = sessions
        self._advertise = advertise
        self._advertisement: Any = None
        self._current: dict[str, tuple[Connection, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._disconnects = RateLimitedLog()
        self._refusals = RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name="wyoming", daemon=True)

    # --- any thread ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Bind every listener (an OSError such as a taken port is logged, the agent runs on)."""
        self._thread.start()
        self._ready.wait(timeout)
        if self._start_error is not None:
            log.error("wyoming: cannot listen on %s: %s; Home Assistant cannot reach this device",
                      self._bind, self._start_error)
            return
        ports = {role: port for role, (port, _) in self._sessions.items()}
        log.info("wyoming: serving %s on %s", ", ".join(f"{r} on port {p}" for r, p in ports.items()), self._bind)
        if self._advertise is not None:
            self._advertisement = self._advertise(ports)

    def stop(self, timeout: float = 3.0) -> None:
        """Close the listeners and every connection at once, so Home Assistant sees the end now."""
        if self._advertisement is not None:
            self._advertisement.close()
            self._advertisement = None
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass
        self._thread.join(timeout)

    def call(self, coro: Any) -> bool:
        """Run a coroutine on the loop from another thread (the listener's utterances)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return False
        try:
            asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:   # the loop closed meanwhile (stopping)
            coro.close()
            return False
        return True

    def session(self, role: str) -> Any:
        """The session currently serving `role`, or None."""
        current = self._current.get(role)
        return current[1] if current else None

    # --- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        try:
            for role, (port, _) in self._sessions.items():
                server = await asyncio.start_server(
                    lambda r, w, role=role: self._accept(role, r, w), self._bind, port,
                    limit=MAX_HEADER_BYTES, reuse_address=True)
                self._servers.append(server)
        except OSError as exc:
            self._start_error = exc
        self._ready.set()
        if self._start_error is None:
            await self._stopping.wait()
        for server in self._servers:
            server.close()
        for conn, session in list(self._current.values()):
            conn.close()
            if conn.task is not None:
                conn.task.cancel()

    async def _accept(self, role: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        conn = Connection(role, peer, writer)
        if peer not in self._allow:
            self._refusals.info("wyoming %s: connection from %s refused (not in wyoming.allow)", role, peer)
            conn.close()
            return
        old = self._current.get(role)
        if old is not None and old[1].busy:
            # one connection per role: the one that is working keeps the role
            from wyoming.error import Error
            await conn.send(Error(text="busy: another connection is being served", code="busy").event())
            self._refusals.info("wyoming %s: second connection from %s answered busy", role, peer)
            conn.close()
            return
        if old is not None:
            self._disconnects.info("wyoming %s: a new connection from %s replaces the one from %s", role, peer,
                                   old[0].peer)
            old[0].close()
            if old[0].task is not None:
                old[0].task.cancel()
        session = self._sessions[role][1](conn)
        conn.task = asyncio.current_task()
        self._current[role] = (conn, session)
        try:
            await self._serve(conn, session, reader)
        finally:
            if self._current.get(role, (None,))[0] is conn:
                del self._current[role]
            session.closed()
            conn.close()

    async def _serve(self, conn: Connection, session: Any, reader: asyncio.StreamReader) -> None:
        from wyoming.info import Describe
        from wyoming.ping import Ping, Pong

        try:
            while True:
                try:
                    event = await asyncio.wait_for(read_event(reader), IDLE_S)
                except asyncio.TimeoutError:
                    if session.busy:   # Home Assistant waits in silence for a long transcription
                        continue
                    raise
                if event is None:
                    self._disconnects.info("wyoming %s: %s disconnected", conn.role, conn.peer)
                    return
                if Describe.is_type(event.type):
                    await conn.send(session.info())
                elif Ping.is_type(event.type):
                    await conn.send(Pong(text=event.data.get("text")).event())
                else:
                    await session.handle(event)
        except FrameError as exc:
            log.warning("wyoming %s: %s from %s; connection closed", conn.role, exc, conn.peer)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:   # an event without its fields
            log.warning("wyoming %s: malformed %s event from %s (%s: %s); connection closed", conn.role,
                        event.type, conn.peer, type(exc).__name__, exc)
        except asyncio.TimeoutError:
            self._disconnects.info("wyoming %s: %s silent for %.0f s; connection closed", conn.role, conn.peer, IDLE_S)
        except (ConnectionError, OSError) as exc:
            self._disconnects.info("wyoming %s: %s disconnected (%s)", conn.role, conn.peer, exc)
        except asyncio.CancelledError:
            pass   # replaced by a newer connection, or stopping
