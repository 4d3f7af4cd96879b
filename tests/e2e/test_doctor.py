"""`voice-agent doctor`, run as a user would, one test per problem it detects.

Brokers are real Mosquittos (tests/support/broker.py; the password broker of
tests/support/broker_access.py);
"not installed" is a program name that is nowhere; "not enough memory" is a sparse model file
larger than this machine's memory. Only Mosquitto missing in demo mode is simulated in-process,
because it is installed here in /usr/sbin, where the agent itself would find it.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from agent.ops import doctor
from agent.settings import TEST_ENGINES_ENV
from tests.support.broker import Broker, free_port
from tests.support.cli import cli
from tests.support.broker_access import auth_broker


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def run_doctor(tmp_path: Path, config: dict[str, Any] | None, *extra: str,
               env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    args = ["doctor", *extra]
    if config is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"device_id": "doc-dev", "state_dir": str(tmp_path / "state"), **config}))
        args += ["--config", str(path)]
    out = cli(*args, env={**os.environ, TEST_ENGINES_ENV: "1", **(env or {})}, cwd=tmp_path)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stdout.strip().splitlines()
    assert all(line.startswith(("OK ", "PROBLEM ", "WARNING ")) for line in lines), lines
    return out.returncode, lines


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("PROBLEM")]


def plain(broker: Broker, **mqtt: Any) -> dict[str, Any]:
    """A config whose every check passes here: built-in engines and the test broker."""
    return {"mqtt": {"host": broker.host, "port": broker.port, **mqtt},
            "transcriber": {"engine": "bench_metadata"}, "summarizer": {"engine": "extractive"}}


def test_all_checks_pass_on_a_working_config(tmp_path: Path, broker: Broker) -> None:
    code, lines = run_doctor(tmp_path, plain(broker))
    assert code == 0, lines
    checks = [line.split()[1].rstrip(":") for line in lines]
    assert checks == ["config", "transcriber", "summarizer", "broker", "memory", "user"], lines
    assert f"{broker.host}:{broker.port}: connected anonymously (MQTT 5)" in lines[3]
    assert "MB needed" in lines[4] and "MB available" in lines[4]


def test_invalid_config_is_78_and_stops_there(tmp_path: Path) -> None:
    code, lines = run_doctor(tmp_path, {"jobs": {"max_concurrent": "many"}, "mqtt": {"port": 0}})
    assert code == 78
    assert len(lines) == 2 and all(line.startswith("PROBLEM  config:") for line in lines), lines
    assert "jobs.max_concurrent" in lines[0] + lines[1] and "mqtt.port" in lines[0] + lines[1]


def test_engine_that_cannot_work_is_78(tmp_path: Path, broker: Broker) -> None:
    config = plain(broker)
    config["transcriber"] = {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(executable(tmp_path / "w"))}}
    code, lines = run_doctor(tmp_path, config)
    assert code == 78, lines
    assert problems(lines) == [next(line for line in lines if "transcriber.whisper_cpp.model" in line)]
    assert "is required when transcriber.engine is whisper_cpp" in problems(lines)[0]


def test_whisper_cpp_program_not_installed_is_69(tmp_path: Path, broker: Broker) -> None:
    model = tmp_path / "models" / "ggml-canary.bin"
    model.parent.mkdir()
    model.write_bytes(b"\0" * 1024)
    config = plain(broker)
    config["transcriber"] = {"engine": "whisper_cpp",
                             "whisper_cpp": {"binary": "no-such-whisper-cpp", "model": str(model)}}
    code, lines = run_doctor(tmp_path, config)
    assert code == 69, lines
    [problem] = problems(lines)
    assert problem.startswith("PROBLEM  transcriber:") and "'no-such-whisper-cpp'" in problem
    assert "pip install 'voice-agent[whisper-cpp]'" in problem and "(exit 69)" in problem

    config["transcriber"]["whisper_cpp"]["binary"] = str(executable(tmp_path / "bin" / "whisper-cpp"))
    code, lines = run_doctor(tmp_path, config)
    assert code == 0, lines
    assert any(str(model) in line and line.startswith("OK       transcriber") for line in lines), lines


def test_llama_server_program_not_installed_is_69(tmp_path: Path, broker: Broker) -> None:
    config = plain(broker)
    config["summarizer"] = {"engine": "llama_server",
                            "llama_server": {"command": ["no-such-llama-server", "--port", "{port}"]}}
    code, lines = run_doctor(tmp_path, config)
    assert code == 69, lines
    [problem] = problems(lines)
    assert problem.startswith("PROBLEM  summarizer:") and "'no-such-llama-server'" in problem


def test_unreachable_broker_is_68(tmp_path: Path) -> None:
    port = free_port()  # bound and released: nothing listens there
    code, lines = run_doctor(tmp_path, {"mqtt": {"host": "127.0.0.1", "port": port},
                                        "transcriber": {"engine": "bench_metadata"}}, "--timeout", "2")
    assert code == 68, lines
    [problem] = problems(lines)
    assert problem.startswith(f"PROBLEM  broker: 127.0.0.1:{port}: cannot connect") and "refused" in problem


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_wrong_credentials_are_77_and_right_ones_pass(tmp_path: Path, protocol: str) -> None:
    broker = auth_broker(tmp_path / "broker", {"doc-dev": "right-password"})
    try:
        config = plain(broker, username="doc-dev", password="wrong-password", protocol=protocol)
        code, lines = run_doctor(tmp_path, config)
        assert code == 77, lines
        [problem] = problems(lines)
        assert problem.startswith("PROBLEM  broker:") and "refused the credentials as 'doc-dev'" in problem
        assert "wrong-password" not in "\n".join(lines)

        code, lines = run_doctor(tmp_path, plain(broker, username="doc-dev", protocol=protocol),
                                 env={"VOICE_AGENT_MQTT_PASSWORD": "right-password"})
        assert code == 0, lines
        assert any(f"connected as 'doc-dev' (MQTT {protocol})" in line for line in lines), lines
    finally:
        broker.stop()


def test_demo_mode_reports_the_local_mosquitto(tmp_path: Path) -> None:
    code, lines = run_doctor(tmp_path, {"transcriber": {"engine": "bench_metadata"}})
    assert code == 0, lines
    [line] = [line for line in lines if " broker:" in line]
    assert "mqtt.host is null" in line and "starts a local Mosquitto" in line and "mosquitto" in line.split()[-1]


def test_demo_mode_without_mosquitto_is_69(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process: Mosquitto is installed here; the lookup is pointed at a PATH and folders without it."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(TEST_ENGINES_ENV, "1")
    monkeypatch.setattr(doctor, "MOSQUITTO_FALLBACKS", (str(tmp_path / "sbin" / "mosquitto"),))
    (tmp_path / "config.yaml").write_text(f"state_dir: {tmp_path / 'state'}\ntranscriber:\n  engine: bench_metadata\n")
    out = io.StringIO()
    assert doctor.run(tmp_path / "config.yaml", out=out) == 69
    [problem] = problems(out.getvalue().splitlines())
    assert "Mosquitto is not installed" in problem and "apt-get install mosquitto" in problem


def test_engines_larger_than_the_available_memory_are_75(tmp_path: Path, broker: Broker) -> None:
    model = tmp_path / "models" / "huge.bin"
    model.parent.mkdir()
    with open(model, "wb") as f:   # sparse: takes no disk, but is as large as the engine would load
        f.truncate(2 * psutil.virtual_memory().total)
    config = plain(broker)
    config["transcriber"] = {"engine": "whisper_cpp", "whisper_cpp": {
        "binary": str(executable(tmp_path / "bin" / "whisper-cpp")), "model": str(model)}}
    code, lines = run_doctor(tmp_path, config)
    assert code == 75, lines
    [problem] = problems(lines)
    assert problem.startswith("PROBLEM  memory:") and "transcriber whisper_cpp" in problem
    assert "choose a smaller engine" in problem


def test_the_first_problem_decides_the_exit_code(tmp_path: Path) -> None:
    """Program missing (69) and broker unreachable (68): every check still runs, the first one wins."""
    config = {"mqtt": {"host": "127.0.0.1", "port": free_port()}, "transcriber": {"engine": "bench_metadata"},
              "summarizer": {"engine": "llama_server", "llama_server": {"command": ["no-such-llama-server"]}}}
    code, lines = run_doctor(tmp_path, config, "--timeout", "2")
    assert code == 69
    assert [line.split()[1] for line in problems(lines)] == ["summarizer:", "broker:"], lines


def test_help_documents_the_exit_codes() -> None:
    out = cli("doctor", "--help")
    assert out.returncode == 0
    for code in (0, 78, 69, 68, 77, 75):
        assert f"\n  {code} " in out.stdout, out.stdout
