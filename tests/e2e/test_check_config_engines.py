"""The command line as a user meets it: --version, an old Python, check-config's engine checks,
and log lines in the journal's format when standard error is the journal stream."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import __version__
from agent.ops.logs import JournalFormatter
from agent.settings import TEST_ENGINES_ENV
from tests.support.agent import REPO, AgentProcess, voice_agent_cmd
from tests.support.broker import free_port


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*voice_agent_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)


# --- version and Python ------------------------------------------------------------------------


def test_version_flag_and_command_print_the_package_version() -> None:
    flag = cli("--version")
    assert flag.returncode == 0, flag.stderr
    assert flag.stdout.strip() == f"voice-agent {__version__}"
    command = cli("version")
    assert command.returncode == 0 and command.stdout.strip() == __version__


def test_requires_python_matches_the_runtime_check() -> None:
    from agent.__main__ import MIN_PYTHON
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'requires-python = ">={MIN_PYTHON[0]}.{MIN_PYTHON[1]}"' in pyproject


def _python39() -> str | None:
    """A working Python 3.9 (pyenv's shim on PATH may be there and still refuse to run)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for python in [*reversed(candidates), shutil.which("python3.9")]:
        if python and subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 9))"],
                                     capture_output=True, timeout=30).returncode == 0:
            return python
    return None


def test_an_older_python_gets_a_clear_message_not_a_traceback() -> None:
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter on this machine (pyenv or python3.9 on PATH)")
    out = subprocess.run([python, "-m", "agent", "version"], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 78, out.stderr
    assert "needs Python 3.10 or newer" in out.stderr and "3.9" in out.stderr
    assert "Traceback" not in out.stderr


# --- check-config: configs that cannot work ----------------------------------------------------


def _check(tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    config = {"state_dir": str(tmp_path / "state"), **config}
    path.write_text(yaml.safe_dump(config))
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    return cli("check-config", str(path), env={**base, **(env or {})})


def _canary(path: Path, data: bytes = b"canary") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# (config, the key the refusal names, words of the message)
REFUSED = {
    "whisper_cpp without a model": (
        {"transcriber": {"engine": "whisper_cpp"}}, "transcriber.whisper_cpp.model", "is required"),
    "whisper_cpp model missing": (
        {"transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"model": "models/none.bin"}}},
        "transcriber.whisper_cpp.model", "file not found"),
    "whisper_server without url or command": (
        {"transcriber": {"engine": "whisper_server"}}, "transcriber.whisper_server", "needs url"),
    "whisper_server command with {model} but no model": (
        {"transcriber": {"engine": "whisper_server", "whisper_server": {"command": ["whisper-server", "-m", "{model}"]}}},
        "transcriber.whisper_cpp.model", "is required"),
    "faster_whisper folder missing": (
        {"transcriber": {"engine": "faster_whisper", "faster_whisper": {"model": "./no-such-model"}}},
        "transcriber.faster_whisper.model", "model folder not found"),
    "faster_whisper folder without model.bin": (
        {"transcriber": {"engine": "faster_whisper", "faster_whisper": {"model": "{tmp}/empty-model"}}},
        "transcriber.faster_whisper.model", "no model.bin"),
    "pocketsphinx grammar missing": (
        {"transcriber": {"engine": "pocketsphinx", "pocketsphinx": {"grammar": "grammars/none.jsgf"}}},
        "transcriber.pocketsphinx.grammar", "grammar file not found"),
    "pocketsphinx in German": (
        {"transcriber": {"engine": "pocketsphinx", "language": "de"}}, "transcriber.language", "US-English"),
    "openai transcriber without a key": (
        {"transcriber": {"engine": "openai"}}, "transcriber.openai.api_key", "OPENAI_API_KEY"),
    "llama_server without a command": (
        {"summarizer": {"engine": "llama_server"}}, "summarizer.llama_server.command", "is required"),
    "llama_server command with {model} but no model": (
        {"summarizer": {"engine": "llama_server", "llama_server": {"command": ["llama-server", "-m", "{model}"]}}},
        "summarizer.llama_server.model", "is required"),
    "llama_server model missing": (
        {"summarizer": {"engine": "llama_server",
                        "llama_server": {"command": ["llama-server", "-m", "{model}"], "model": "none.gguf"}}},
        "summarizer.llama_server.model", "file not found"),
    "openai summarizer without a key": (
        {"summarizer": {"engine": "openai"}}, "summarizer.openai.api_key", "OPENAI_API_KEY"),
    "anthropic summarizer without a key": (
        {"summarizer": {"engine": "anthropic"}}, "summarizer.anthropic.api_key", "ANTHROPIC_API_KEY"),
}


def _fill(config: Any, tmp: Path) -> Any:
    if isinstance(config, dict):
        return {k: _fill(v, tmp) for k, v in config.items()}
    if isinstance(config, list):
        return [_fill(v, tmp) for v in config]
    return config.replace("{tmp}", str(tmp)) if isinstance(config, str) else config


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_config_refuses_an_engine_that_cannot_work(tmp_path: Path, case: str) -> None:
    config, key, words = REFUSED[case]
    (tmp_path / "empty-model").mkdir()
    out = _check(tmp_path, _fill(config, tmp_path))
    assert out.returncode == 78, f"{case}: accepted\n{out.stdout}"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{tmp_path / 'config.yaml'}: {key}") and words in lines[0], lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_check_config_accepts_the_same_engines_when_their_files_and_keys_are_there(tmp_path: Path) -> None:
    _canary(tmp_path / "models" / "ggml.bin")
    _canary(tmp_path / "grammars" / "home.jsgf", b"#JSGF V1.0;\ngrammar home;\npublic <c> = lights on;\n")
    _canary(tmp_path / "fw" / "model.bin")
    _canary(tmp_path / "gemma.gguf")
    accepted = [
        {"transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"model": "models/ggml.bin"}}},
        {"transcriber": {"engine": "whisper_server", "whisper_server": {"url": "http://127.0.0.1:1"}}},
        {"transcriber": {"engine": "whisper_server", "whisper_cpp": {"model": "models/ggml.bin"},
                         "whisper_server": {"command": ["whisper-server", "-m", "{model}"]}}},
        {"transcriber": {"engine": "faster_whisper", "faster_whisper": {"model": str(tmp_path / "fw")}}},
        {"transcriber": {"engine": "faster_whisper", "faster_whisper": {"model": "base"}}},  # a name: downloaded
        {"transcriber": {"engine": "pocketsphinx", "pocketsphinx": {"grammar": "grammars/home.jsgf"}}},
        {"summarizer": {"engine": "llama_server",
                        "llama_server": {"command": ["llama-server", "-m", "{model}"], "model": "gemma.gguf"}}},
        {"summarizer": {"engine": "llama_server", "llama_server": {"oneshot_command": ["llm", "{prompt}"]}}},
        # Another engine's section may hold anything: only the chosen engine is checked.
        {"transcriber": {"engine": "pocketsphinx", "whisper_cpp": {"model": "models/none.bin"}},
         "summarizer": {"engine": "extractive", "llama_server": {"model": "none.gguf"}}},
    ]
    for config in accepted:
        out = _check(tmp_path, config)
        assert out.returncode == 0, f"{config} refused: {out.stderr}"
    keys = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "ant-test"}
    for config in ({"transcriber": {"engine": "openai"}}, {"summarizer": {"engine": "openai"}},
                   {"summarizer": {"engine": "anthropic"}}):
        out = _check(tmp_path, config, env=keys)
        assert out.returncode == 0, f"{config} with keys in the environment refused: {out.stderr}"
        assert "sk-test" not in out.stdout and "ant-test" not in out.stdout


def test_run_still_starts_with_a_missing_model_and_says_why_at_error_level(tmp_path: Path) -> None:
    """At `run`, an engine that cannot load is an ERROR line (and the engine state), not an exit:
    the agent stays reachable so the config can be fixed over MQTT."""
    agent = AgentProcess(tmp_path / "agent", free_port(), {
        "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": sys.executable, "model": None}}})
    agent.start()
    try:
        _wait_log(agent, "transcriber whisper_cpp unavailable")
        assert agent.alive()
        assert "no whisper.cpp model configured" in agent.log()
    finally:
        agent.stop()


# --- logging for the journal -------------------------------------------------------------------


def _wait_log(agent: AgentProcess, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while text not in agent.log():
        assert agent.alive(), f"agent exited {agent.proc.poll()} before logging {text!r}:\n{agent.log()}"
        assert time.monotonic() < deadline, f"no {text!r} in the log within {timeout} s:\n{agent.log()}"
        time.sleep(0.1)
    return agent.log()


def _agent_log(tmp_path: Path, *, journal: bool | str) -> list[str]:
    """Run an agent whose engine cannot load (ERROR) against a closed port (WARNING), at DEBUG."""
    workdir = tmp_path / "agent"
    workdir.mkdir()
    log_path = workdir / "agent.log"
    log_path.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal is True:
        st = os.stat(log_path)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    elif journal:
        env["JOURNAL_STREAM"] = journal
    agent = AgentProcess(workdir, free_port(), {
        "log_level": "DEBUG",
        "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": sys.executable, "model": None}}},
        env=env)
    agent.start()
    try:
        _wait_log(agent, "unavailable")
        _wait_log(agent, "retrying")
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=30)
    return agent.log().splitlines()


def test_log_lines_carry_syslog_priorities_and_no_timestamp_under_journald(tmp_path: Path) -> None:
    lines = [line for line in _agent_log(tmp_path, journal=True) if line.strip()]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<3>") and "whisper_cpp unavailable" in line for line in lines), lines
    assert any(line.startswith("<4>") and "retrying" in line for line in lines), lines
    assert any(line.startswith("<6>") for line in lines), lines
    assert not any(line[3:].split(" ", 1)[0][:4].isdigit() for line in lines), "a timestamp is still there"
    assert not any(" ERROR " in line or " WARNING " in line or " INFO " in line for line in lines), lines


@pytest.mark.parametrize("journal", [False, "12345:67890"], ids=["unset", "another-stream"])
def test_log_lines_keep_their_timestamp_when_stderr_is_not_the_journal(tmp_path: Path, journal: bool | str) -> None:
    """Unset, or inherited by a process whose standard error is somewhere else: today's format."""
    lines = [line for line in _agent_log(tmp_path, journal=journal) if line.strip()]
    assert not any(line.startswith("<") for line in lines), lines
    assert any(line[:4].isdigit() and " ERROR agent" in line and "whisper_cpp unavailable" in line
               for line in lines), lines
    assert any(" WARNING " in line and "retrying" in line for line in lines), lines


def test_every_level_maps_to_its_syslog_priority_on_every_line() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")
    for level, prefix in ((logging.CRITICAL, "<3>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
                          (logging.INFO, "<6>"), (logging.DEBUG, "<7>")):
        record = logging.LogRecord("agent.x", level, __file__, 1, "first\nsecond", None, None)
        assert formatter.format(record).splitlines() == [f"{prefix}agent.x: first", f"{prefix}second"]


# --- test-only engines ---------------------------------------------------------------------------


def test_the_test_engine_is_refused_without_the_test_switch(tmp_path: Path) -> None:
    """bench_metadata answers from the audio's metadata: only tests and benchmarks may choose it."""
    config = tmp_path / "config.yaml"
    config.write_text("transcriber:\n  engine: bench_metadata\n")
    env = {k: v for k, v in os.environ.items() if k != TEST_ENGINES_ENV}
    refused = cli("check-config", str(config), env=env)
    assert refused.returncode == 78, refused.stderr
    assert "transcriber.engine" in refused.stderr and "bench_metadata" in refused.stderr
    assert f"a test engine: set {TEST_ENGINES_ENV}=1 (tests and benchmarks only)" in refused.stderr
    assert "Traceback" not in refused.stderr

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("transcriber:\n  engine: no_such_engine\n")
    listed = cli("check-config", str(unknown), env=env)
    assert listed.returncode == 78 and "must be one of" in listed.stderr
    assert "bench_metadata" not in listed.stderr, "a test engine is listed as a choice"

    accepted = cli("check-config", str(config), env={**env, TEST_ENGINES_ENV: "1"})
    assert accepted.returncode == 0, accepted.stderr
    assert yaml.safe_load(accepted.stdout)["transcriber"]["engine"] == "bench_metadata"
