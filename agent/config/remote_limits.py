"""What a value set over MQTT must satisfy beyond what the local file may hold.

The schema (`agent.settings`) bounds every field for the local file (`min` / `max` / `choices`)
and, for remote changes, narrower: `remote_min` / `remote_max` (`off` exempts the value that
switches a feature off). This module applies those declared remote bounds and the few rules that
need more than one field or the machine itself, in one place:

- the engine threads of the transcriptions that may run at once, each engine's threads and the
  job slots stay within the CPU cores (a requester could otherwise ask for 32 jobs x 64 threads);
- `memory.min_available_mb` stays within a quarter of the machine's memory (a huge value makes
  every heavy job `memory_pressure` and the alert permanent);
- PocketSphinx is asked only for English (any other language fails every job);
- an engine that sends audio or transcripts off the device needs the local opt-in
  `mqtt.remote_off_device_engines`.

Rules look only at what a change touches, so a local file that already goes beyond them does not
block unrelated remote tuning. Refusals: `unsafe_value` and `off_device_forbidden` (handlers/config.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import psutil

from agent.config.problems import Problem, join_path, show_number
from agent.settings import Settings

#: Keys whose change re-checks the CPU rule.
_CPU_KEYS = frozenset({"jobs.max_concurrent", "transcriber.concurrency", "transcriber.engine",
                       "transcriber.whisper_cpp.threads", "transcriber.faster_whisper.threads"})
_THREAD_KEYS = frozenset({"transcriber.whisper_cpp.threads", "transcriber.faster_whisper.threads"})
POCKETSPHINX_LANGUAGES = ("en", "auto")


def cpu_cores() -> int:
    """CPUs this process may run on (the affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def remote_problems(partial: Mapping, settings: Settings, *, cores: int | None = None,
                    memory_mb: float | None = None) -> tuple[list[Problem], list[Problem]]:
    """(unsafe, off_device): what a remote change `partial`, resulting in `settings`, may not do."""
    touched = dict(_leaves(Settings, settings, partial, ""))
    unsafe = [p for path, (f, value) in touched.items() if (p := _bounds(path, f, value)) is not None]
    unsafe += _cross(settings, set(touched), cores or cpu_cores(),
                     memory_mb if memory_mb is not None else psutil.virtual_memory().total / 2**20)
    return unsafe, _off_device(settings, set(touched))


def _leaves(cls: type, obj: Any, data: Mapping, prefix: str) -> typing.Iterator[tuple[str, tuple[Any, Any]]]:
    """(path, (field, value in force)) for every schema leaf the change names."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, raw in data.items():
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            continue
        path = join_path(prefix, key)
        if dataclasses.is_dataclass(hints[key]):
            if isinstance(raw, Mapping):
                yield from _leaves(hints[key], getattr(obj, key), raw, path)
        else:
            yield path, (f, getattr(obj, key))


def _bounds(path: str, f: dataclasses.Field, value: Any) -> Problem | None:
    meta = f.metadata
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if meta.get("off") is not None and value == meta["off"]:
        return None
    low, high = meta.get("remote_min"), meta.get("remote_max")
    if low is not None and value < low:
        return Problem(path, f"must be at least {show_number(low)} when set over MQTT", value)
    if high is not None and value > high:
        return Problem(path, f"must be at most {show_number(high)} when set over MQTT", value)
    return None


def engine_threads(settings: Settings) -> int:
    """CPU threads one transcription of the chosen engine uses (1 for single-threaded ones)."""
    t = settings.transcriber
    return {"whisper_cpp": t.whisper_cpp.threads, "faster_whisper": t.faster_whisper.threads}.get(t.engine, 1)


def _cross(s: Settings, touched: set[str], cores: int, memory_mb: float) -> list[Problem]:
    out: list[Problem] = []
    if touched & _CPU_KEYS:
        jobs, threads = s.jobs.max_concurrent, engine_threads(s)
        at_once = min(jobs, s.transcriber.concurrency)
        if jobs > cores:
            out.append(Problem("jobs.max_concurrent", f"must be at most the {cores} CPU cores", jobs))
        for path in sorted(touched & _THREAD_KEYS):
            value = s.transcriber.whisper_cpp.threads if "whisper_cpp" in path else s.transcriber.faster_whisper.threads
            if value > cores:
                out.append(Problem(path, f"must be at most the {cores} CPU cores", value))
        if threads * at_once > cores:
            out.append(Problem("transcriber", f"{threads} engine threads x {at_once} transcriptions at once "
                                              f"(jobs.max_concurrent, transcriber.concurrency) exceed the "
                                              f"{cores} CPU cores"))
    if "memory.min_available_mb" in touched and s.memory.min_available_mb is not None:
        cap = int(memory_mb / 4)
        if s.memory.min_available_mb > cap:
            out.append(Problem("memory.min_available_mb", f"must be at most {cap} (a quarter of this machine's "
                                                          "memory) when set over MQTT", s.memory.min_available_mb))
    if touched & {"transcriber.engine", "transcriber.language"} and s.transcriber.engine == "pocketsphinx" \
            and s.transcriber.language not in POCKETSPHINX_LANGUAGES:
        out.append(Problem("transcriber.language", "pocketsphinx knows only English (en or auto)",
                           s.transcriber.language))
    return out


def off_device_engines(settings: Settings) -> dict[str, str]:
    """Chosen engines that send audio or transcripts to another machine: {key path: engine}."""
    t, s = settings.transcriber, settings.summarizer
    out: dict[str, str] = {}
    if (t.engine == "openai" and not is_loopback_url(t.openai.base_url)) or \
            (t.engine == "whisper_server" and t.whisper_server.url and not is_loopback_url(t.whisper_server.url)):
        out["transcriber.engine"] = t.engine
    if s.engine in ("openai", "anthropic") and not is_loopback_url(getattr(s, s.engine).base_url):
        out["summarizer.engine"] = s.engine
    return out


def _off_device(s: Settings, touched: set[str]) -> list[Problem]:
    if s.mqtt.remote_off_device_engines:
        return []
    return [Problem(path, "sends audio or transcripts off the device; only the local file may choose it "
                          "(or set mqtt.remote_off_device_engines: true there)", engine)
            for path, engine in off_device_engines(s).items() if path in touched]


def is_loopback_url(url: str | None) -> bool:
    host = (urlsplit(url or "").hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
