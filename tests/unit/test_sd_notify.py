"""sd_notify over a real datagram socket, the watchdog gate and the pinger, in process."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ops.systemd import Notifier, WatchdogGate, WatchdogPinger, watchdog_interval


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket standing in for systemd, named in $NOTIFY_SOCKET.

    A short folder under /tmp: socket paths are limited to 108 bytes, pytest's tmp_path may not be.
    """
    with tempfile.TemporaryDirectory(prefix="va-") as folder:
        path = os.path.join(folder, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield sock
        finally:
            sock.close()


def receive(sock: socket.socket) -> str:
    """One datagram, waiting at most the socket timeout (2 s) for it."""
    return sock.recv(4096).decode()


def drain(sock: socket.socket) -> list[str]:
    """Every datagram already waiting, without blocking."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return got


def collect_for(sock: socket.socket, seconds: float) -> list[str]:
    """Datagrams arriving within `seconds`."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            break
    sock.settimeout(2.0)
    return got


def test_messages_are_exactly_formatted(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready("connected to broker")
    assert receive(notify_socket) == "READY=1\nSTATUS=connected to broker"
    notifier.ready()
    assert receive(notify_socket) == "READY=1"
    notifier.status("idle, 3 jobs done")
    assert receive(notify_socket) == "STATUS=idle, 3 jobs done"
    notifier.watchdog()
    assert receive(notify_socket) == "WATCHDOG=1"
    notifier.stopping()
    assert receive(notify_socket) == "STOPPING=1"
    notifier.close()


def test_reloading_carries_the_monotonic_clock_in_microseconds(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", receive(notify_socket))
    assert match, "RELOADING=1 followed by MONOTONIC_USEC=<digits>"
    assert before <= int(match.group(1)) <= after


def test_generic_notify_keeps_order_uppercases_keys_and_flattens_newlines(notify_socket: socket.socket) -> None:
    Notifier().notify(status="two\nlines", ERRNO=5, ready=True)
    assert receive(notify_socket) == "STATUS=two lines\nERRNO=5\nREADY=1"


def test_socket_is_read_once_at_construction(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    notifier.watchdog()
    assert receive(notify_socket) == "WATCHDOG=1"


def test_abstract_socket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"voice-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier().ready("abstract")
        assert receive(sock) == "READY=1\nSTATUS=abstract"


def test_unset_socket_is_a_silent_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.reloading() is False
    assert notifier.watchdog() is False
    notifier.close()


def test_unreachable_socket_never_raises(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.stopping() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_gate_heartbeats() -> None:
    clock = FakeClock()
    gate = WatchdogGate(clock)
    gate.register("main", max_silence_s=10)
    gate.register("mqtt", max_silence_s=10)
    assert gate.healthy() == (True, [])

    clock.now += 11
    assert gate.healthy() == (False, ["main", "mqtt"])
    gate.beat("main")
    assert gate.healthy() == (False, ["mqtt"])
    gate.beat("mqtt")  # a beat ends the silence
    assert gate.healthy() == (True, [])


def test_gate_rejects_unknown_names() -> None:
    gate = WatchdogGate()
    with pytest.raises(KeyError):
        gate.beat("never-registered")


def test_pinger_pings_only_while_healthy(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    gate = WatchdogGate()
    gate.register("worker", max_silence_s=0.3)
    keep_beating = threading.Event()
    keep_beating.set()

    def beats() -> None:
        while keep_beating.is_set():
            gate.beat("worker")
            time.sleep(0.01)

    early = threading.Thread(target=beats, daemon=True)
    early.start()
    pinger = WatchdogPinger(gate, Notifier())
    assert pinger.interval == pytest.approx(0.1)
    caplog.set_level(logging.INFO, logger="agent.ops.systemd")
    pinger.start()
    try:
        healthy = collect_for(notify_socket, 0.55)
        assert set(healthy) == {"WATCHDOG=1"}
        assert 3 <= len(healthy) <= 8, f"about one ping per 0.1 s, got {len(healthy)} in 0.55 s"

        keep_beating.clear()   # the loop stops beating
        early.join(2)
        time.sleep(0.5)  # its silence allowance passed and the pinger has seen it
        drain(notify_socket)
        assert collect_for(notify_socket, 0.5) == [], "no pings while a worker is stuck"
        stuck_logs = [r for r in caplog.records if "stuck: worker" in r.getMessage()]
        assert len(stuck_logs) == 1, "the stuck part is named once, not at every tick"

        stop_beating = threading.Event()

        def worker_progress() -> None:
            while not stop_beating.wait(0.01):
                gate.beat("worker")

        beater = threading.Thread(target=worker_progress, daemon=True)
        beater.start()
        try:
            resumed = collect_for(notify_socket, 0.55)
        finally:
            stop_beating.set()
            beater.join(2)
        assert len(resumed) >= 3 and set(resumed) == {"WATCHDOG=1"}, f"pings resume, got {resumed}"
        assert any("recovered" in r.getMessage() for r in caplog.records)
    finally:
        pinger.stop()
    assert not pinger.active


def test_pinger_does_nothing_without_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    pinger = WatchdogPinger(WatchdogGate(), Notifier({}))
    pinger.start()
    assert not pinger.active
    pinger.stop()


def test_pinger_stops_promptly(monkeypatch: pytest.MonkeyPatch) -> None:
    pinger = WatchdogPinger(WatchdogGate(), Notifier({}), interval=3600)
    pinger.start()
    assert pinger.active
    started = time.monotonic()
    pinger.stop()
    assert time.monotonic() - started < 1.0
    assert not pinger.active
