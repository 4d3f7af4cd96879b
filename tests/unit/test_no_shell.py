"""No shell anywhere: agent/ and handlers/ never start a shell, and engine command lines are lists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.paths import REPO


SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell"), ("pty", "spawn")}


def _sources() -> list[Path]:
    files = sorted((REPO / "agent").rglob("*.py")) + sorted((REPO / "handlers").rglob("*.py"))
    assert len(files) > 20
    return files


def test_no_shell_anywhere_in_agent_or_handlers():
    problems = []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(REPO)
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"shell\s*=\s*True|os\.system\s*\(|os\.popen\s*\(|create_subprocess_shell", line):
                problems.append(f"{rel}:{n}: {line.strip()}")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:   # shell=<anything but a literal False>
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{rel}:{node.lineno}: shell={ast.unparse(kw.value)}")
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in SHELL_CALLS:
                    problems.append(f"{rel}:{node.lineno}: {func.value.id}.{func.attr}()")
    assert not problems, "shell use found:\n" + "\n".join(problems)


def test_engine_command_lines_are_lists_in_the_schema():
    import dataclasses
    import typing

    from agent import settings as s
    for cls, name in ((s.LlamaServerSettings, "command"), (s.LlamaServerSettings, "oneshot_command"),
                      (s.WhisperServerSettings, "command"), (s.WhisperCppSettings, "extra_args")):
        hint = typing.get_type_hints(cls)[name]
        assert "list[str]" in str(hint), (cls.__name__, name, hint)
        assert name in {f.name for f in dataclasses.fields(cls)}
    from agent.config import ConfigError, parse_settings
    with pytest.raises(ConfigError) as err:
        parse_settings({"summarizer": {"llama_server": {"command": "llama-server --port {port}; rm -rf /"}}})
    assert "summarizer.llama_server.command" in str(err.value)
