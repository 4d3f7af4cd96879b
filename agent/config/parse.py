"""The generic schema interpreter: walk a settings dataclass and validate a mapping against it.

Types come from the annotations, and ranges, choices, secrets, environment variables and paths
from the field metadata in `agent.settings`, so adding a setting never means touching this
module. Validation never stops at the first problem: `Parser` collects every one, skips values
that already failed instead of piling on, and runs the cross-field rules of
`agent.config.checks` after each section. `${VAR}` interpolation and path resolution live here
too because the parser applies them to the leaves whose metadata asks for them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.checks import CROSS_CHECKS
from agent.config.problems import REDACTED, Problem, join_path, show_number
from agent.settings import TEST_ENGINES_ENV, allows_test_engines

# `${VAR}` / `${VAR:-default}`; a doubled `$${...}` is an escape for a literal `${...}`.
_VAR_RE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Bad:
    """Marks a value that already produced a problem, so later checks skip it instead of piling on."""


_BAD: Any = _Bad()


def interpolate(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand `${VAR}` and `${VAR:-default}`; return the text and the names that were not set.

    As in the shell, `:-` also applies when the variable is set but empty.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            missing.append(name)
        return ""

    return _VAR_RE.sub(replace, text), missing


def resolve_path(value: str, base_dir: Path | str) -> str:
    """Absolute form of a configured path; relative ones are relative to the config file's folder."""
    expanded = os.path.expanduser(value)
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), expanded))


@dataclass(frozen=True)
class _Kind:
    """What a leaf field accepts: scalar types, or a list of item kind, and/or null."""

    scalars: tuple[type, ...] = ()
    item: _Kind | None = None
    optional: bool = False

    def describe(self) -> str:
        words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        parts = [words[t] for t in self.scalars]
        if self.item is not None:
            parts.append("a list of strings" if self.item.scalars == (str,) else "a list")
        if self.optional:
            parts.append("null")
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
        return "must be " + text


def _kind_of(annotation: Any) -> _Kind:
    """Reduce a schema annotation (`int`, `str | None`, `list[str] | None`, ...) to a _Kind."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    optional = type(None) in members
    scalars: list[type] = []
    item: _Kind | None = None
    for member in members:
        if member is type(None):
            continue
        if typing.get_origin(member) is list:
            item = _kind_of(typing.get_args(member)[0])
        elif member in (str, int, float, bool):
            scalars.append(member)
        else:
            raise TypeError(f"unsupported settings annotation: {annotation!r}")
    return _Kind(tuple(scalars), item, optional)


def type_name(value: Any) -> str:
    """'an integer', 'a list', ...: the YAML-level word for what was given, for messages."""
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
                              float: "a number", bool: "a boolean"}
    return names.get(type(value), f"a {type(value).__name__}")


class Parser:
    """One validation pass; collects problems instead of raising so all of them are reported."""

    def __init__(self, *, lines: dict[str, int], base_dir: Path, environ: Mapping[str, str]) -> None:
        self.lines = lines
        self.base_dir = base_dir
        self.environ = environ
        self.problems: list[Problem] = []

    def add(self, path: str, message: str, value: Any = None, *, secret: bool = False) -> None:
        shown = REDACTED if secret and value is not None else value
        self.problems.append(Problem(path, message, shown, self._line(path)))

    def _line(self, path: str) -> int | None:
        """The key's own line, else the closest enclosing key's (a missing key has no line)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = path.rfind("[") if path.endswith("]") else path.rfind(".")
            path = path[:cut] if cut > 0 else ""
        return None

    # sections

    def section(self, cls: type, data: Mapping, path: str) -> Any:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        self._unknown_keys(data, [f.name for f in fields], path)
        values: dict[str, Any] = {}
        for f in fields:
            child = join_path(path, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                value = self._subsection(hints[f.name], f.name in data, data.get(f.name), child)
            else:
                value = self.leaf(f, _kind_of(hints[f.name]), data, child)
            if value is not _BAD:
                values[f.name] = value
        check = CROSS_CHECKS.get(cls)
        if check is not None:
            check(values, lambda key, message, value=None: self.add(join_path(path, key), message, value))
        if len(values) != len(fields):
            return _BAD
        return cls(**values)

    def _subsection(self, cls: type, present: bool, raw: Any, path: str) -> Any:
        if not present:
            return self.section(cls, {}, path)
        if isinstance(raw, Mapping):
            return self.section(cls, raw, path)
        self.add(path, "must be a mapping of keys" + (", not null" if raw is None else f", not {type_name(raw)}"))
        return _BAD

    def _unknown_keys(self, data: Mapping, names: list[str], path: str) -> None:
        for key in data:
            if key in names:
                continue
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(names)
            # The value is left out on purpose: a misspelt `pasword:` would otherwise echo the secret.
            self.add(join_path(path, key), f"unknown key; {hint}")

    # leaves

    def leaf(self, f: dataclasses.Field, kind: _Kind, data: Mapping, path: str) -> Any:
        meta = f.metadata
        secret = bool(meta.get("secret"))
        raw = data.get(f.name)
        env_name = meta.get("env")
        if raw is None and env_name and self.environ.get(env_name):
            return self._finish(self.environ[env_name], kind, meta, path, from_text=False)
        if f.name not in data:
            return self._finish(_default(f), kind, meta, path, from_text=False)
        value, from_text = self._interpolate(raw, path, secret)
        if value is _BAD:
            return _BAD
        return self._finish(value, kind, meta, path, from_text=from_text)

    def _interpolate(self, raw: Any, path: str, secret: bool) -> tuple[Any, bool]:
        """Expand `${...}` in a string or list of strings; the flag says a scalar string used `${...}`."""
        if isinstance(raw, str):
            text, missing = interpolate(raw, self.environ)
            for name in missing:
                self.add(path, f"environment variable {name} is not set", raw, secret=secret)
            return (_BAD if missing else text), _VAR_RE.search(raw) is not None
        if isinstance(raw, list):
            items = [self._interpolate(item, f"{path}[{i}]", secret)[0] for i, item in enumerate(raw)]
            return (_BAD if any(item is _BAD for item in items) else items), False
        return raw, False

    def _finish(self, value: Any, kind: _Kind, meta: Mapping[str, Any], path: str, *, from_text: bool) -> Any:
        secret = bool(meta.get("secret"))
        if from_text and str not in kind.scalars and isinstance(value, str):
            value = _from_text(value, kind)
        value = self._typed(value, kind, meta, path, secret)
        if value is _BAD or value is None:
            return value
        if not self._in_range(value, meta, path, secret):
            return _BAD
        if meta.get("path") and isinstance(value, str):
            if not value.strip():
                self.add(path, "must not be empty", value)
                return _BAD
            return resolve_path(value, self.base_dir)
        return value

    def _typed(self, value: Any, kind: _Kind, meta: Mapping[str, Any], path: str, secret: bool) -> Any:
        if value is None:
            if kind.optional:
                return None
            self.add(path, kind.describe() + ", not null")
            return _BAD
        if str in kind.scalars and meta.get("choices") and _is_number(value):
            value = str(value)  # `protocol: 5` is an int in YAML but means "5"
        for scalar in kind.scalars:
            accepted = _accept(value, scalar)
            if accepted is not _BAD:
                return accepted
        if kind.item is not None and isinstance(value, list):
            return self._list(value, kind.item, path, secret)
        self.add(path, kind.describe(), value, secret=secret)
        return _BAD

    def _list(self, value: list, item: _Kind, path: str, secret: bool) -> Any:
        items = []
        for index, element in enumerate(value):
            accepted = _BAD
            for scalar in item.scalars:
                accepted = _accept(element, scalar)
                if accepted is not _BAD:
                    break
            if accepted is _BAD:
                self.add(f"{path}[{index}]", item.describe(), element, secret=secret)
            items.append(accepted)
        return _BAD if any(i is _BAD for i in items) else items

    def _in_range(self, value: Any, meta: Mapping[str, Any], path: str, secret: bool) -> bool:
        low, high, choices = meta.get("min"), meta.get("max"), meta.get("choices")
        if _is_number(value):
            if low is not None and value < low:
                self.add(path, f"must be at least {show_number(low)}", value, secret=secret)
                return False
            if high is not None and value > high:
                self.add(path, f"must be at most {show_number(high)}", value, secret=secret)
                return False
        max_len, item_max_len = meta.get("max_len"), meta.get("item_max_len")
        if max_len is not None and isinstance(value, (str, list)) and len(value) > max_len:
            unit = "characters" if isinstance(value, str) else "items"
            self.add(path, f"must be at most {max_len} {unit} (has {len(value)})", value, secret=secret)
            return False
        if item_max_len is not None and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str) and len(item) > item_max_len:
                    self.add(f"{path}[{index}]", f"must be at most {item_max_len} characters", item, secret=secret)
                    return False
        if choices and value in meta.get("test_choices", ()):
            if allows_test_engines(self.environ):
                return True
            self.add(path, f"a test engine: set {TEST_ENGINES_ENV}=1 (tests and benchmarks only)", value,
                     secret=secret)
            return False
        if choices and value not in choices:
            shown = ", ".join(repr(c) for c in choices[:12]) + (f", ... ({len(choices)} in all)" if len(choices) > 12 else "")
            self.add(path, "must be one of " + shown, value, secret=secret)
            return False
        return True


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _accept(value: Any, scalar: type) -> Any:
    """The value as `scalar`, or _BAD. bool is never a number and a fractional float never an int."""
    if scalar is bool:
        return value if isinstance(value, bool) else _BAD
    if scalar is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if scalar is float:
        return float(value) if _is_number(value) and math.isfinite(value) else _BAD
    return value if isinstance(value, scalar) else _BAD


def _from_text(text: str, kind: _Kind) -> Any:
    """Read `port: ${PORT}` as the number (or boolean) the field wants; leave it a string otherwise."""
    stripped = text.strip()
    if kind.optional and stripped in ("", "null", "~"):
        return None
    for scalar in kind.scalars:
        if scalar is bool and stripped.lower() in ("true", "false"):
            return stripped.lower() == "true"
        try:
            if scalar is int:
                return int(stripped)
            if scalar is float:
                return float(stripped)
        except ValueError:
            continue
    return text
