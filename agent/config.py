"""Turn YAML into `agent.settings.Settings`, reporting every problem at once with its key path and line.

A device in a drawer gets no second chance at a clear error message, so validation never stops at
the first problem: the whole document is walked and every mistake is collected into one
`ConfigError`. The schema (types, ranges, choices, secrets, environment variables, paths) lives in
the field metadata of `agent.settings`; this module only interprets it.

`ConfigStore` (base file + remote overlay, cached by file signature) lives in `agent.config_store`
and is re-exported here lazily.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from agent.settings import (
    FleetSettings,
    HomeAssistantSettings,
    MemorySettings,
    MQTTSettings,
    Settings,
    TLSSettings,
)

if TYPE_CHECKING:
    from agent.config_store import ConfigStore

__all__ = [
    "ConfigError",
    "ConfigStore",
    "Problem",
    "changed_sections",
    "deep_merge",
    "interpolate",
    "load_yaml_text",
    "parse_settings",
    "resolve_path",
    "revision",
    "settings_to_dict",
]

REDACTED = "***"
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# `${VAR}` / `${VAR:-default}`; a doubled `$${...}` is an escape for a literal `${...}`.
_VAR_RE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MAX_SHOWN = 80


class _Bad:
    """Marks a value that already produced a problem, so later checks skip it instead of piling on."""


_BAD: Any = _Bad()


# --- Problems ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, addressed the way the user wrote it."""

    path: str
    message: str
    value: Any = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.path
        if self.value is not None:
            shown = REDACTED if isinstance(self.value, str) and self.value == REDACTED else _show(self.value)
            where = f"{where} = {shown}" if where else shown
        text = f"{where}: {self.message}" if where else self.message
        prefix = f"line {self.line}: " if self.line is not None else ""
        return (prefix + text).replace("\n", " ")


class ConfigError(Exception):
    """Every problem found in one attempt to load the configuration."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would rebuild from the joined text; keep the structured problems instead.
        return (type(self), (self.problems,))


def _show(value: Any) -> str:
    """JSON so strings are visibly quoted and null reads like the YAML; cut so one line stays one line."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


# --- YAML with line numbers -------------------------------------------------------------------


def load_yaml_text(text: str, source: str = "<config>") -> tuple[dict, dict[str, int]]:
    """Parse YAML safely and remember the line of every key, so problems can point into the file."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[str, int] = {}
        duplicates: list[Problem] = []
        _walk_node(node, "", lines, duplicates, set())
        if duplicates:
            raise ConfigError(duplicates)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "syntax error"
        raise ConfigError([Problem("", f"invalid YAML in {source}: {reason}", line=line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"invalid YAML in {source}: {exc}")]) from None
    finally:
        loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        problem = Problem("", f"{source}: top level must be a mapping of keys", line=node.start_mark.line + 1)
        raise ConfigError([problem])
    return data, lines


def _walk_node(node: yaml.Node, path: str, lines: dict[str, int], problems: list[Problem], stack: set[int]) -> None:
    """Record key lines and refuse duplicate keys (PyYAML would silently keep the last one)."""
    if id(node) in stack:  # a recursive alias: nothing new below
        return
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            child = _join(path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                problems.append(Problem(child, "duplicate key", line=line))
                continue
            seen.add(key_node.value)
            lines[child] = line
            _walk_node(value_node, child, lines, problems, stack)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines[child] = item.start_mark.line + 1
            _walk_node(item, child, lines, problems, stack)
    stack.discard(id(node))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- Small public helpers ---------------------------------------------------------------------


def deep_merge(base: Mapping, overlay: Mapping) -> dict:
    """A new dict: nested mappings merge key by key, anything else in `overlay` replaces."""
    merged = {key: _copy(value) for key, value in base.items()}
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _copy(value: Any) -> Any:
    """Copy containers so the merged dict never aliases (and later mutates) its inputs."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


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


def settings_to_dict(settings: Any, *, redact: bool = True) -> dict:
    """Plain JSON-able dict in schema order; secrets that are set become '***' unless redact=False."""
    result: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            result[f.name] = settings_to_dict(value, redact=redact)
        elif redact and f.metadata.get("secret") and value is not None:
            result[f.name] = REDACTED
        elif isinstance(value, list):
            result[f.name] = list(value)
        else:
            result[f.name] = value
    return result


def revision(settings: Settings) -> str:
    """Short content hash, so a fleet dashboard can tell which devices run the same config."""
    canonical = json.dumps(settings_to_dict(settings, redact=False), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def changed_sections(old: Settings, new: Settings) -> list[str]:
    """Top-level fields that differ, so the app restarts only the parts a reload touched."""
    return [f.name for f in dataclasses.fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]


# --- Validation -------------------------------------------------------------------------------


def parse_settings(
    data: Mapping,
    *,
    lines: Mapping[str, int] | None = None,
    base_dir: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate a whole document and build Settings; raise one ConfigError holding every problem."""
    parser = _Parser(
        lines=dict(lines or {}),
        base_dir=Path(base_dir) if base_dir is not None else Path.cwd(),
        environ=os.environ if environ is None else environ,
    )
    if not isinstance(data, Mapping):
        raise ConfigError([Problem("", f"top level must be a mapping of keys, not {_type_name(data)}")])
    settings = parser.section(Settings, data, "")
    if parser.problems:
        # File order reads best next to the file; the sort is stable, so line-less ones keep schema order.
        raise ConfigError(sorted(parser.problems, key=lambda p: math.inf if p.line is None else p.line))
    return settings


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


def _type_name(value: Any) -> str:
    """'an integer', 'a list', ...: the YAML-level word for what was given, for messages."""
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
                              float: "a number", bool: "a boolean"}
    return names.get(type(value), f"a {type(value).__name__}")


class _Parser:
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
            child = _join(path, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                value = self._subsection(hints[f.name], f.name in data, data.get(f.name), child)
            else:
                value = self.leaf(f, _kind_of(hints[f.name]), data, child)
            if value is not _BAD:
                values[f.name] = value
        check = _CROSS_CHECKS.get(cls)
        if check is not None:
            check(values, lambda key, message, value=None: self.add(_join(path, key), message, value))
        if len(values) != len(fields):
            return _BAD
        return cls(**values)

    def _subsection(self, cls: type, present: bool, raw: Any, path: str) -> Any:
        if not present:
            return self.section(cls, {}, path)
        if isinstance(raw, Mapping):
            return self.section(cls, raw, path)
        self.add(path, "must be a mapping of keys" + (", not null" if raw is None else f", not {_type_name(raw)}"))
        return _BAD

    def _unknown_keys(self, data: Mapping, names: list[str], path: str) -> None:
        for key in data:
            if key in names:
                continue
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(names)
            # The value is left out on purpose: a misspelt `pasword:` would otherwise echo the secret.
            self.add(_join(path, key), f"unknown key; {hint}")

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
                self.add(path, f"must be at least {_num(low)}", value, secret=secret)
                return False
            if high is not None and value > high:
                self.add(path, f"must be at most {_num(high)}", value, secret=secret)
                return False
        if choices and value not in choices:
            self.add(path, "must be one of " + ", ".join(repr(c) for c in choices), value, secret=secret)
            return False
        return True


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


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


# --- Rules that involve more than one field ---------------------------------------------------

_Add = Callable[..., None]


def _check_settings(values: dict[str, Any], add: _Add) -> None:
    device_id = values.get("device_id")
    if isinstance(device_id, str) and not _DEVICE_ID_RE.match(device_id):
        add("device_id", "must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'", device_id)


def _check_topic(key: str, topic: Any, add: _Add) -> None:
    """A topic prefix is a literal topic: no wildcards, no empty levels, no stray slashes."""
    if not isinstance(topic, str):
        return
    if not topic:
        add(key, "must not be empty", topic)
    elif "+" in topic or "#" in topic or "\0" in topic:
        add(key, "must not contain '+', '#' or NUL", topic)
    elif topic.startswith("/") or topic.endswith("/"):
        add(key, "must not start or end with '/'", topic)
    elif "//" in topic:
        add(key, "must not contain empty levels ('//')", topic)


def _check_mqtt(values: dict[str, Any], add: _Add) -> None:
    _check_topic("topic_prefix", values.get("topic_prefix"), add)
    low, high = values.get("reconnect_min_s"), values.get("reconnect_max_s")
    if low is not None and high is not None and high < low:
        add("reconnect_max_s", f"must be at least reconnect_min_s ({_num(low)})", high)
    password_file = values.get("password_file")
    if "password" in values and values["password"] is None and isinstance(password_file, str):
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            add("password_file", f"cannot read: {getattr(exc, 'strerror', None) or exc}", password_file)
            values.pop("password_file")
            return
        if not password:
            add("password_file", "is empty", password_file)
            values.pop("password_file")
            return
        values["password"] = password


def _check_tls(values: dict[str, Any], add: _Add) -> None:
    cert, key = values.get("cert_file"), values.get("key_file")
    if "cert_file" in values and "key_file" in values:
        if cert is not None and key is None:
            add("key_file", "is required when cert_file is set")
        if key is not None and cert is None:
            add("cert_file", "is required when key_file is set")


def _check_memory(values: dict[str, Any], add: _Add) -> None:
    warn, critical = values.get("warn_percent"), values.get("critical_percent")
    if warn is not None and critical is not None and critical <= warn:
        add("critical_percent", f"must be greater than warn_percent ({_num(warn)})", critical)


def _check_homeassistant(values: dict[str, Any], add: _Add) -> None:
    _check_topic("discovery_prefix", values.get("discovery_prefix"), add)


def _check_fleet(values: dict[str, Any], add: _Add) -> None:
    group = values.get("group")
    if isinstance(group, str) and (not group or any(c in group for c in "/+#\0")):
        add("group", "must be a non-empty name without '/', '+' or '#'", group)


_CROSS_CHECKS: Mapping[type, Callable[[dict[str, Any], _Add], None]] = types.MappingProxyType({
    Settings: _check_settings,
    MQTTSettings: _check_mqtt,
    TLSSettings: _check_tls,
    MemorySettings: _check_memory,
    HomeAssistantSettings: _check_homeassistant,
    FleetSettings: _check_fleet,
})


def __getattr__(name: str) -> Any:
    """Re-export ConfigStore lazily: agent.config_store imports this module, so no import at the top."""
    if name == "ConfigStore":
        from agent.config_store import ConfigStore

        return ConfigStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
