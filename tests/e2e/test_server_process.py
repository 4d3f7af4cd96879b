"""ServerProcess against a real child process: a tiny HTTP server script written by the test.

The script answers 503 ("loading") for a configurable time, then 200, and can fork a
grandchild so the tests can prove that stopping a server leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.engines import supervisor
from agent.engines.supervisor import ServerProcess, probe
from agent.errors import EngineError
from tests.support.broker import free_port
from tests.support.llama import process_alive as alive, wait_gone
from tests.support.paths import REPO
from tests.support.fake_server import script, servers  # noqa: F401  (fixtures)


def make_server(script: Path, *, loading_s: float = 1.0, child_pid_file: str = "-",
                start_timeout_s: float = 20.0, health_interval_s: float = 10.0) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        "fake", [sys.executable, str(script), str(port), str(loading_s), child_pid_file],
        f"http://127.0.0.1:{port}/health",
        start_timeout_s=start_timeout_s, health_interval_s=health_interval_s,
    )


def test_start_waits_through_503_until_healthy(script: Path, servers: list) -> None:
    server = make_server(script, loading_s=1.0)
    servers.append(server)
    began = time.monotonic()
    server.start()
    assert time.monotonic() - began >= 0.9  # the 503 phase was waited out, not taken as success
    assert server.running and server.pid is not None
    assert probe(server.health_url) == 200
    assert server.restarts == 0 and server.last_error is None


def test_killed_child_is_restarted_by_ensure_running(script: Path, servers: list) -> None:
    server = make_server(script, loading_s=0.5)
    servers.append(server)
    server.start()
    old_pid = server.pid
    time.sleep(0.6)  # past the 1 s backoff measured from the first start
    os.kill(old_pid, signal.SIGKILL)
    assert wait_gone(old_pid)
    server.ensure_running()
    assert server.restarts == 1
    assert server.pid is not None and server.pid != old_pid
    assert probe(server.health_url) == 200
    server.ensure_running()  # healthy: no further restart
    assert server.restarts == 1


def test_restarts_respect_exponential_backoff(script: Path, servers: list) -> None:
    server = make_server(script, loading_s=0.1)
    servers.append(server)
    server.start()
    time.sleep(1.1)
    os.kill(server.pid, signal.SIGKILL)
    server.ensure_running()  # first restart: allowed
    assert server.restarts == 1
    os.kill(server.pid, signal.SIGKILL)
    with pytest.raises(EngineError) as caught:  # second one within 2 s of the first: refused at once
        server.ensure_running()
    assert caught.value.code == "engine_unavailable"
    assert "next restart" in caught.value.message
    assert server.restarts == 1
    time.sleep(2.1)
    server.ensure_running()
    assert server.restarts == 2 and server.running


def test_command_that_exits_immediately_is_engine_unavailable(servers: list) -> None:
    port = free_port()
    server = ServerProcess("broken", [sys.executable, "-c", "import sys; print('no model'); sys.exit(3)"],
                           f"http://127.0.0.1:{port}/health", start_timeout_s=30)
    servers.append(server)
    began = time.monotonic()
    with pytest.raises(EngineError) as caught:
        server.start()
    assert caught.value.code == "engine_unavailable"
    assert "code 3" in caught.value.message and "no model" in caught.value.message
    assert time.monotonic() - began < 15  # noticed the exit, did not wait for the 30 s timeout (wide for load)
    assert server.last_error and not server.running


def test_never_healthy_times_out_and_kills_the_process(script: Path, servers: list,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_server(script, loading_s=600, start_timeout_s=1.5)
    servers.append(server)
    spawned: list[int] = []
    real_spawn = supervisor.spawn

    def recording_spawn(*args, **kwargs):
        proc = real_spawn(*args, **kwargs)
        spawned.append(proc.pid)
        return proc

    monkeypatch.setattr(supervisor, "spawn", recording_spawn)
    with pytest.raises(EngineError) as caught:
        server.start()
    assert caught.value.code == "engine_unavailable" and "not healthy" in caught.value.message
    assert spawned and wait_gone(spawned[0])


def test_stop_leaves_no_process_behind(script: Path, tmp_path: Path, servers: list) -> None:
    child_file = tmp_path / "child.pid"
    server = make_server(script, loading_s=0, child_pid_file=str(child_file))
    servers.append(server)
    server.start()
    pid = server.pid
    grandchild = int(child_file.read_text())
    assert alive(pid) and alive(grandchild)
    server.stop()
    assert server.pid is None and not server.running
    assert wait_gone(pid) and wait_gone(grandchild)
    server.stop()  # idempotent


def test_stop_kills_a_stopped_server_quickly(script: Path, servers: list) -> None:
    server = make_server(script, loading_s=0)
    servers.append(server)
    server.start()
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)  # a SIGTERM alone would stay pending forever
    began = time.monotonic()
    server.stop(grace_s=30.0)
    assert wait_gone(pid)
    assert time.monotonic() - began < 15  # SIGCONT let it act on SIGTERM without the 30 s SIGKILL wait


def test_monitor_restarts_a_dead_server_unless_guarded(script: Path, servers: list) -> None:
    server = make_server(script, loading_s=0, health_interval_s=0.2)
    servers.append(server)
    server.start()
    guard = threading.Lock()
    server.start_monitor(guard=guard)
    time.sleep(1.1)
    with guard:  # a request "in flight": the monitor must leave the server alone
        os.kill(server.pid, signal.SIGKILL)
        time.sleep(0.8)
        assert server.restarts == 0
    deadline = time.monotonic() + 5
    while server.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.restarts == 1
    deadline = time.monotonic() + 5
    while not (server.running and probe(server.health_url) == 200) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.running


DRIVER = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
from agent.engines.supervisor import ServerProcess
server = ServerProcess("fake", [sys.executable, sys.argv[2], sys.argv[3], "0", "-"],
                       "http://127.0.0.1:%s/health" % sys.argv[3], start_timeout_s=20)
server.start()
print(server.pid, flush=True)
time.sleep(300)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_a_killed_agent(script: Path, tmp_path: Path) -> None:
    """SIGKILL gives the agent no chance to clean up; PDEATHSIG must take the server down."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    project = str(REPO)
    agent = subprocess.Popen([sys.executable, str(driver), project, str(script), str(free_port())],
                             stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid = int(agent.stdout.readline())
        assert alive(server_pid)
        agent.kill()
        agent.wait()
        assert wait_gone(server_pid, timeout_s=5.0)
    finally:
        agent.kill()
        agent.wait()
        if server_pid is not None and alive(server_pid):
            os.killpg(server_pid, signal.SIGKILL)  # do not leak the server if the test failed


def test_a_oneshot_run_leaves_no_background_child_behind(tmp_path: Path) -> None:
    """A one-shot summarizer that forks a helper into the background and exits: the helper is
    killed with the run (it shares the run's process group), not left running."""
    from agent.engines.llama_server import LlamaServerSummarizer
    from agent.settings import LlamaServerSettings, SummarizerSettings

    pid_file = tmp_path / "child.pid"
    script = ("import subprocess; p = subprocess.Popen(['sleep', '300'], stdout=subprocess.DEVNULL, "
              f"stderr=subprocess.DEVNULL); open({str(pid_file)!r}, 'w').write(str(p.pid)); print('a summary')")
    summarizer = LlamaServerSummarizer(SummarizerSettings(
        engine="llama_server", llama_server=LlamaServerSettings(oneshot_command=[sys.executable, "-c", script])))
    try:
        assert summarizer._oneshot("some words to summarize") == "a summary"
        assert wait_gone(int(pid_file.read_text())), "the background child outlived the one-shot run"
    finally:
        summarizer.close()
