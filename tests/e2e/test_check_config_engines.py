"""`voice-agent check-config` refuses an engine that cannot work (and the test engine without its
switch), and accepts the same engines once their files and keys are there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.settings import TEST_ENGINES_ENV
from tests.support.cli import cli


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


def test_language_auto_is_noted_where_the_engine_cannot_detect_it(tmp_path: Path) -> None:
    """`transcriber.language: auto` works with every engine, but PocketSphinx (and an English-only
    Whisper model) hears everything as English: check-config accepts it and says so."""
    sphinx = _check(tmp_path, {"transcriber": {"engine": "pocketsphinx", "language": "auto"}})
    assert sphinx.returncode == 0, sphinx.stderr
    assert 'note: transcriber.language = "auto"' in sphinx.stderr and "PocketSphinx" in sphinx.stderr, sphinx.stderr
    model = _canary(tmp_path / "models" / "ggml-base.en.bin")
    english = _check(tmp_path, {"transcriber": {"engine": "whisper_cpp", "language": "auto",
                                                "whisper_cpp": {"model": str(model)}}})
    assert english.returncode == 0 and "English-only" in english.stderr, english.stderr
    multilingual = _check(tmp_path, {"transcriber": {"engine": "whisper_cpp", "language": "auto",
                                                     "whisper_cpp": {"model": str(_canary(tmp_path / "models" / "ggml-base.bin"))}}})
    assert multilingual.returncode == 0 and "note:" not in multilingual.stderr, multilingual.stderr


def test_fleet_engine_is_refused_on_a_device_that_is_also_a_worker(tmp_path: Path) -> None:
    both = _check(tmp_path, {"transcriber": {"engine": "fleet"}, "fleet": {"worker": True}})
    assert both.returncode == 78 and "fleet.worker" in both.stderr, both.stderr
    alone = _check(tmp_path, {"transcriber": {"engine": "fleet", "fleet": {"fallback": "pocketsphinx"}}})
    assert alone.returncode == 0, alone.stderr
