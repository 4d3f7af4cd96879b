"""The live configuration: a base YAML file plus a remote overlay, re-read only when a file changes.

The base file belongs to whoever provisions the device (Ansible, a fleet tool, a human); the overlay
(`<state_dir>/config-overlay.yaml`) belongs to `config/set` over MQTT. Keeping them apart means a
fleet tool rewriting the base file does not wipe remote changes, and `config/reset` is just
deleting the overlay. `check()` runs every second on a Pi Zero, so it only stats the two files and
re-parses when their signature (mtime_ns, size, inode) moves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import yaml

from agent.config import (
    ConfigError,
    Problem,
    deep_merge,
    interpolate,
    load_yaml_text,
    parse_settings,
    resolve_path,
    revision,
    settings_to_dict,
)
from agent.config.remote import forbidden, strip_forbidden, strip_paths
from agent.config.remote_limits import remote_problems
from agent.durable import fsync_dir, write_atomically
from agent.settings import DEVICE, Settings

log = logging.getLogger(__name__)

OVERLAY_NAME = "config-overlay.yaml"
_DEFAULT_STATE_DIR = str(Settings.__dataclass_fields__["state_dir"].default)
_OVERLAY_HEADER = (
    "# Remote configuration written by voice-agent (config/set over MQTT).\n"
    "# It overrides the base config file; config/reset (or deleting this file) drops it.\n"
)

# (st_mtime_ns, st_size, st_ino), None for a missing file, or ("error", errno) for an unreadable one.
_Stat = Optional[tuple[Any, ...]]
_Signature = tuple[_Stat, _Stat]


class RemoteForbidden(Exception):
    """A remote change named keys that only the local config file may set."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(", ".join(paths))
        self.paths = paths


class RemoteUnsafe(Exception):
    """A remote change valid for the local file but beyond what MQTT may set (agent.config.remote_limits)."""

    def __init__(self, code: str, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.code, self.problems = code, problems


class ConfigStore:
    """Base YAML file + overlay file in state_dir, cached by modification time."""

    def __init__(
        self,
        path: Path | str | None,
        *,
        environ: Mapping[str, str] | None = None,
        overrides: dict | None = None,
    ) -> None:
        self._path = Path(os.path.abspath(os.path.expanduser(path))) if path is not None else None
        self._base_dir = self._path.parent if self._path is not None else Path.cwd()
        self._environ = environ
        self._overrides = deep_merge({}, overrides or {})
        self._lock = threading.RLock()
        self._revision_key: bytes | None = None
        self._revision_cache: tuple[Settings, str] | None = None
        self._settings: Settings | None = None
        self._base: dict = {}
        self._base_lines: dict[str, int] = {}
        self._overlay: dict = {}
        self._overlay_path: Path | None = None
        self._signature: _Signature | None = None
        self._bad_signature: _Signature | None = None
        self.hits = 0
        self.misses = 0

    # --- reading ------------------------------------------------------------------------------

    def load(self) -> Settings:
        """Read and validate everything; raise ConfigError with all problems."""
        with self._lock:
            return self._reload()

    def check(self) -> Settings | None:
        """New Settings when a file changed and is valid; None when nothing changed.

        A broken edit raises ConfigError once per file signature and the previous settings stay
        current, so the agent keeps running and the log is not flooded every second.
        """
        with self._lock:
            if self._settings is None:
                self.misses += 1
                return self._reload()
            signature = self._current_signature()
            if signature in (self._signature, self._bad_signature):
                self.hits += 1
                return None
            self.misses += 1
            return self._refresh(signature)

    # --- writing the overlay ------------------------------------------------------------------

    def set_overlay(self, partial: dict, scope: str = DEVICE) -> Settings:
        """Merge `partial` into the overlay; persist it only if base + overlay is valid.

        A key that `scope` may not change (see agent.config.remote) refuses the whole change with
        RemoteForbidden before anything is merged, validated or written; a valid value beyond the
        remote bounds (agent.config.remote_limits) with RemoteUnsafe, before anything is written.
        """
        with self._lock:
            self._ensure_loaded()
            if not isinstance(partial, Mapping):
                raise ConfigError([Problem("", "the config change must be a mapping of keys")])
            refused = forbidden(partial, scope)
            if refused:
                raise RemoteForbidden(refused)
            overlay = deep_merge(self._overlay, partial)
            settings = self._validate(self._base, self._base_lines, overlay)
            unsafe, off_device = remote_problems(partial, settings)
            if off_device:
                raise RemoteUnsafe("off_device_forbidden", off_device)
            if unsafe:
                raise RemoteUnsafe("unsafe_value", unsafe)
            overlay_path = self._overlay_path  # state_dir cannot change through the overlay
            assert overlay_path is not None
            write_atomically(overlay_path, [(_OVERLAY_HEADER + _dump(overlay)).encode("utf-8")], mode=0o600)
            self._store(settings, overlay, overlay_path, (self._signature_base(), _stat(overlay_path)))
            return settings

    def reset_overlay(self) -> Settings:
        """Drop every remote change: delete the overlay file and reload from disk."""
        with self._lock:
            self._ensure_loaded()
            assert self._overlay_path is not None
            with contextlib.suppress(FileNotFoundError):
                self._overlay_path.unlink()
                fsync_dir(self._overlay_path.parent)
            self._overlay = {}
            return self._refresh(self._current_signature())

    # --- views --------------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def settings(self) -> Settings:
        with self._lock:
            return self._ensure_loaded()

    @property
    def revision(self) -> str:
        """Computed once per loaded config: state is republished on every job change.

        The cache is one (settings, revision) pair, replaced whole, and the answer is always the
        revision of the settings this call read: another thread that was still hashing older
        settings may overwrite the cache, but never this answer.
        """
        settings = self.settings
        cached = self._revision_cache
        if cached is None or cached[0] is not settings:
            cached = (settings, revision(settings, self.revision_key))
            self._revision_cache = cached
        return cached[1]

    @property
    def revision_key(self) -> bytes:
        """A random per-device key in state_dir (0600) that keeps secrets out of the revision."""
        if self._revision_key is None:
            path = Path(self.settings.state_dir) / ".revision-key"
            try:
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(os.urandom(32))
                self._revision_key = path.read_bytes()
            except OSError:   # read-only state: a key for this run only (revisions change on restart)
                self._revision_key = os.urandom(32)
        return self._revision_key

    @property
    def overlay(self) -> dict:
        with self._lock:
            return deep_merge({}, self._overlay)

    @property
    def overlay_path(self) -> Path:
        with self._lock:
            self._ensure_loaded()
            assert self._overlay_path is not None
            return self._overlay_path

    def effective(self, *, redact: bool = True) -> dict:
        return settings_to_dict(self.settings, redact=redact)

    # --- internals ----------------------------------------------------------------------------

    def _ensure_loaded(self) -> Settings:
        return self._settings if self._settings is not None else self._reload()

    def _refresh(self, signature: _Signature) -> Settings:
        """Reload; remember a failing signature so the same broken files are reported only once."""
        try:
            settings = self._reload()
        except ConfigError:
            self._bad_signature = signature
            raise
        self._bad_signature = None
        return settings

    def _reload(self) -> Settings:
        base, base_lines, base_stat = self._read_base()
        overlay_path = Path(self._state_dir(deep_merge(base, self._overrides))) / OVERLAY_NAME
        overlay, overlay_stat = _read_overlay(overlay_path)
        overlay, dropped = strip_forbidden(overlay)
        if dropped:
            log.warning("ignoring %s in %s: only the local config file may set %s",
                        ", ".join(dropped), overlay_path, "it" if len(dropped) == 1 else "them")
        settings = self._validate(base, base_lines, overlay)
        unsafe, off_device = remote_problems(overlay, settings)
        if unsafe or off_device:   # written by an older version, or now beyond the rules: not trusted
            dropped = sorted({p.path for p in unsafe + off_device})
            log.warning("ignoring %s in %s: beyond what a remote change may set (%s)", ", ".join(dropped),
                        overlay_path, "; ".join(str(p) for p in unsafe + off_device))
            overlay = strip_paths(overlay, dropped)
            settings = self._validate(base, base_lines, overlay)
        self._base, self._base_lines = base, base_lines
        self._store(settings, overlay, overlay_path, (base_stat, overlay_stat))
        return settings

    def _store(self, settings: Settings, overlay: dict, overlay_path: Path, signature: _Signature) -> None:
        self._settings = settings
        self._overlay = overlay
        self._overlay_path = overlay_path
        self._signature = signature
        self._bad_signature = None

    def _validate(self, base: dict, base_lines: dict[str, int], overlay: dict) -> Settings:
        """base + CLI overrides + overlay; lines only for keys whose value still comes from the base file."""
        problems: list[Problem] = []
        merged = deep_merge(deep_merge(base, self._overrides), overlay)
        lines = _lines_not_overridden(base_lines, [self._overrides, overlay])
        try:
            settings = parse_settings(merged, lines=lines, base_dir=self._base_dir, environ=self._environ)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return settings

    def _state_dir(self, data: dict) -> str:
        """Where the overlay lives, worked out before validation because the overlay is part of it.

        A value that is not a usable string falls back to the default; validation reports it.
        """
        raw = data.get("state_dir")
        if isinstance(raw, str):
            text, missing = interpolate(raw, os.environ if self._environ is None else self._environ)
            if not missing and text.strip():
                return resolve_path(text, self._base_dir)
        return resolve_path(_DEFAULT_STATE_DIR, self._base_dir)

    def _read_base(self) -> tuple[dict, dict[str, int], _Stat]:
        if self._path is None:
            return {}, {}, None
        text, stat = _read_text(self._path)
        if text is None:
            raise ConfigError([Problem("", f"cannot read {self._path}: {stat[1] if stat else 'no such file'}")])
        if not text.strip() and self._settings is not None:
            # An empty file at start-up means "all defaults"; while running it is far more likely a
            # truncated write (full disk, interrupted copy), and the defaults would swap broker and engines.
            raise ConfigError([Problem("", f"{self._path} is empty (a truncated write?); the running config is kept")])
        data, lines = load_yaml_text(text, str(self._path))
        return data, lines, stat

    def _signature_base(self) -> _Stat:
        return self._signature[0] if self._signature is not None else None

    def _current_signature(self) -> _Signature:
        base = _stat(self._path) if self._path is not None else None
        overlay = _stat(self._overlay_path) if self._overlay_path is not None else None
        return base, overlay


def _read_overlay(path: Path) -> tuple[dict, _Stat]:
    """The overlay as a dict; a missing file is an empty overlay, not an error."""
    text, stat = _read_text(path)
    if text is None:
        if stat is None:
            return {}, None
        raise ConfigError([Problem("", f"cannot read {path}: {stat[1]}")])
    data, _lines = load_yaml_text(text, str(path))
    return data, stat


def _read_text(path: Path) -> tuple[str | None, _Stat]:
    """Content and the signature of the very file read (fstat on the open file, so they match)."""
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            raw = fh.read()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, ("error", exc.strerror or str(exc))
    try:
        return raw.decode("utf-8"), (info.st_mtime_ns, info.st_size, info.st_ino)
    except UnicodeDecodeError as exc:
        return None, ("error", f"not UTF-8 text ({exc.reason} at byte {exc.start})")


def _stat(path: Path) -> _Stat:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return ("error", exc.strerror or str(exc))
    return info.st_mtime_ns, info.st_size, info.st_ino


def _lines_not_overridden(lines: dict[str, int], layers: list[dict]) -> dict[str, int]:
    """Drop base-file lines for keys another layer replaced, so a problem never points at the wrong value."""
    replaced: list[str] = []
    for layer in layers:
        replaced.extend(_leaf_paths(layer, ""))
    if not replaced:
        return lines
    return {
        path: line for path, line in lines.items()
        if not any(path == r or path.startswith(r + ".") or path.startswith(r + "[") for r in replaced)
    }


def _leaf_paths(data: Mapping, prefix: str) -> list[str]:
    paths: list[str] = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        paths.extend(_leaf_paths(value, path) if isinstance(value, Mapping) else [path])
    return paths


def _dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
