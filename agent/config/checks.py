"""Rules that involve more than one field, run by the parser after each section's leaves.

The schema metadata in `agent.settings` describes one field at a time; what it cannot say
(a cert without its key, critical below warn, a readable password file, a literal MQTT topic)
lives here, keyed by the settings class it applies to.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from agent.config.problems import Problem, show_number
from agent.settings import (
    FleetSettings,
    HomeAssistantSettings,
    ListenSettings,
    MemorySettings,
    MQTTSettings,
    Settings,
    SummarizerSettings,
    TLSSettings,
    WyomingSettings,
    WakeWordSettings,
    parse_wake_model,
)

_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Add = Callable[..., None]
"""``add(key, message, value=None)``: report a problem with a key of the section being checked."""


def _check_settings(values: dict[str, Any], add: Add) -> None:
    device_id = values.get("device_id")
    if isinstance(device_id, str) and not _DEVICE_ID_RE.match(device_id):
        add("device_id", "must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'", device_id)


def _check_topic(key: str, topic: Any, add: Add) -> None:
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


def _check_mqtt(values: dict[str, Any], add: Add) -> None:
    _check_topic("topic_prefix", values.get("topic_prefix"), add)
    low, high = values.get("reconnect_min_s"), values.get("reconnect_max_s")
    if low is not None and high is not None and high < low:
        add("reconnect_max_s", f"must be at least reconnect_min_s ({show_number(low)})", high)
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


def _check_tls(values: dict[str, Any], add: Add) -> None:
    cert, key = values.get("cert_file"), values.get("key_file")
    if "cert_file" in values and "key_file" in values:
        if cert is not None and key is None:
            add("key_file", "is required when cert_file is set")
        if key is not None and cert is None:
            add("cert_file", "is required when key_file is set")


def _check_memory(values: dict[str, Any], add: Add) -> None:
    warn, critical = values.get("warn_percent"), values.get("critical_percent")
    if warn is not None and critical is not None and critical <= warn:
        add("critical_percent", f"must be greater than warn_percent ({show_number(warn)})", critical)


def _check_summarizer(values: dict[str, Any], add: Add) -> None:
    """Exactly one {text}: every one is expanded, so a prompt of many would multiply the transcript."""
    prompt = values.get("prompt")
    if isinstance(prompt, str) and prompt.count("{text}") != 1:
        add("prompt", f"must contain {{text}} exactly once (has {prompt.count('{text}')})", prompt)


def _check_homeassistant(values: dict[str, Any], add: Add) -> None:
    _check_topic("discovery_prefix", values.get("discovery_prefix"), add)


def _check_fleet(values: dict[str, Any], add: Add) -> None:
    group = values.get("group")
    if isinstance(group, str) and (not group or any(c in group for c in "/+#\0")):
        add("group", "must be a non-empty name without '/', '+' or '#'", group)


def _check_wyoming(values: dict[str, Any], add: Add) -> None:
    import ipaddress

    for key in ("bind",):
        try:
            ipaddress.ip_address(values.get(key, ""))
        except ValueError:
            add(key, "must be an IP address (127.0.0.1, 0.0.0.0, ::)", values.get(key))
    for item in values.get("allow") or ():
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            add("allow", "each entry must be an IP address or network (192.168.1.10, 192.168.1.0/24)", item)
    if values.get("port") is not None and values.get("port") == values.get("stt_port"):
        add("stt_port", "must differ from port", values.get("stt_port"))


WAKE_MODELS_MAX = 8   # each model costs CPU on every 10 ms frame


def _check_wake_word(values: dict[str, Any], add: Add) -> None:
    models = values.get("models")
    if not isinstance(models, list):
        return
    if len(models) > WAKE_MODELS_MAX:
        add("models", f"at most {WAKE_MODELS_MAX} models", len(models))
    names = []
    for i, entry in enumerate(models):
        parsed = parse_wake_model(entry)
        if parsed is None:
            add(f"models[{i}]", "must be name, name:cutoff or name:cutoff:window (name: A-Z a-z 0-9 _ -, "
                                "cutoff between 0 and 1, window 1-100)", entry)
        elif parsed[0] in names:
            add(f"models[{i}]", "names a model twice", entry)
        else:
            names.append(parsed[0])


def _check_listen(values: dict[str, Any], add: Add) -> None:
    wake = values.get("wake_word")
    if values.get("mode") == "wake" and isinstance(wake, WakeWordSettings) and not wake.models:
        add("mode", "wake needs at least one model in listen.wake_word.models", "wake")


CROSS_CHECKS: Mapping[type, Callable[[dict[str, Any], Add], None]] = types.MappingProxyType({
    Settings: _check_settings,
    MQTTSettings: _check_mqtt,
    TLSSettings: _check_tls,
    MemorySettings: _check_memory,
    HomeAssistantSettings: _check_homeassistant,
    SummarizerSettings: _check_summarizer,
    FleetSettings: _check_fleet,
    WyomingSettings: _check_wyoming,
    WakeWordSettings: _check_wake_word,
    ListenSettings: _check_listen,
})


# --- Semantic checks on the chosen engines -------------------------------------------------------
#
# Run by `voice-agent check-config` and `voice-agent doctor`, not by the parser: at `run` the same
# gaps already surface as the engine slot's `engine_unavailable` error (logged at ERROR, shown in
# `state`), while the agent stays reachable over MQTT so the config can be fixed remotely, and a
# model that is copied onto the device after its config does not make the service exit. Only the
# *chosen* engine is looked at: an unused section may hold anything.


def engine_problems(settings: Settings) -> list[Problem]:
    """Problems that make the chosen transcriber or summarizer unable to ever load.

    Each message names the key to set, so the fix is in the line itself. Files are looked up as
    the engine would (paths were already resolved against the config file's folder).
    """
    problems: list[Problem] = []

    def add(path: str, message: str, value: Any = None) -> None:
        problems.append(Problem(path, message, value))

    t, s = settings.transcriber, settings.summarizer
    if t.engine == "whisper_cpp":
        _need_file("transcriber.whisper_cpp.model", t.whisper_cpp.model, "a ggml .bin model file", add,
                   why="transcriber.engine is whisper_cpp")
    elif t.engine == "whisper_server":
        cfg = t.whisper_server
        if not cfg.url and not cfg.command:
            add("transcriber.whisper_server", "needs url (a running server) or command (to start one)")
        elif not cfg.url and any("{model}" in str(part) for part in cfg.command or []):
            _need_file("transcriber.whisper_cpp.model", t.whisper_cpp.model, "a ggml .bin model file", add,
                       why="transcriber.whisper_server.command uses {model}")
    elif t.engine == "faster_whisper":
        model = t.faster_whisper.model
        if os.sep in model or model.startswith(".") or _exists(model):
            if not _is_dir(model):
                add("transcriber.faster_whisper.model", "model folder not found", model)
            elif not _is_file(os.path.join(model, "model.bin")):
                add("transcriber.faster_whisper.model", "model folder has no model.bin", model)
    elif t.engine == "pocketsphinx":
        if t.language not in ("en", "en-us", "en-US", "auto"):
            add("transcriber.language", "pocketsphinx ships only a US-English model (use en)", t.language)
        if t.pocketsphinx.grammar and not _is_file(t.pocketsphinx.grammar):
            add("transcriber.pocketsphinx.grammar", "JSGF grammar file not found", t.pocketsphinx.grammar)
    elif t.engine == "fleet" and settings.fleet.worker:
        add("fleet.worker", "must be false when transcriber.engine is fleet (the device would take its own jobs)",
            True)
    elif t.engine == "moonshine":
        if t.language not in ("en", "en-us", "en-US"):
            add("transcriber.language", "moonshine's Tiny model is English only (use en)", t.language)
        if t.moonshine.model and not _is_dir(t.moonshine.model):
            add("transcriber.moonshine.model", "model folder not found", t.moonshine.model)
    elif t.engine == "openai" and not t.openai.api_key:
        add("transcriber.openai.api_key", "is required when transcriber.engine is openai "
                                          "(or set OPENAI_API_KEY)")

    if s.engine == "llama_server":
        cfg = s.llama_server
        if not cfg.command and not cfg.oneshot_command:
            add("summarizer.llama_server.command", "is required when summarizer.engine is llama_server "
                                                   "(or set oneshot_command)")
        elif any("{model}" in str(part) for part in (cfg.command or []) + (cfg.oneshot_command or [])):
            _need_file("summarizer.llama_server.model", cfg.model, "a GGUF model file", add,
                       why="its command uses {model}")
        elif cfg.model and not _is_file(cfg.model):
            add("summarizer.llama_server.model", "file not found", cfg.model)
    elif s.engine in ("openai", "anthropic") and not getattr(s, s.engine).api_key:
        env = "OPENAI_API_KEY" if s.engine == "openai" else "ANTHROPIC_API_KEY"
        add(f"summarizer.{s.engine}.api_key", f"is required when summarizer.engine is {s.engine} (or set {env})")
    return problems


#: What `transcriber.language: auto` does with each engine (config.example.yaml says the same).
AUTO_LANGUAGE = {
    "whisper_cpp": "detected by whisper.cpp (-l auto) from the first 30 s; the transcript's language is null",
    "whisper_server": "detected by the server (language=auto)",
    "faster_whisper": "detected by faster-whisper; the transcript names the language it found",
    "openai": "left to the API (no language field sent), which detects it",
    "pocketsphinx": "not detected: PocketSphinx has only its US-English model and hears everything as English",
}


def language_notes(settings: Settings) -> list[Problem]:
    """Why `transcriber.language: auto` will not detect anything with the chosen engine and model
    (an English-only engine or model transcribes every language as English). Not a refusal: the
    config works, it just does not do what `auto` suggests."""
    t = settings.transcriber
    if t.language != "auto":
        return []
    reason = None
    if t.engine == "pocketsphinx":
        reason = AUTO_LANGUAGE["pocketsphinx"]
    elif t.engine in ("whisper_cpp", "whisper_server") and ".en." in os.path.basename(t.whisper_cpp.model or ""):
        reason = f"not detected: {os.path.basename(t.whisper_cpp.model or '')} is an English-only Whisper model"
    elif t.engine == "faster_whisper" and os.path.basename(t.faster_whisper.model.rstrip("/")).endswith(".en"):
        reason = f"not detected: {t.faster_whisper.model} is an English-only Whisper model"
    if reason is None:
        return []
    return [Problem("transcriber.language", f"auto is {reason}; set the language the device hears", "auto")]


def _need_file(path: str, value: str | None, what: str, add: Callable[..., None], *, why: str) -> None:
    if not value:
        add(path, f"is required when {why} ({what})")
    elif not _is_file(value):
        add(path, "file not found", value)


# os.path's predicates answer False where pathlib's raise (a folder the checker may not enter).
_is_file, _is_dir, _exists = os.path.isfile, os.path.isdir, os.path.exists


# --- Notices: a config that works but that its owner should know about -------------------------


def notices(settings: Settings) -> list[str]:
    """Warnings `check-config` and `doctor` print without refusing the config."""
    found = []
    wake = settings.listen.wake_word
    if wake.engine == "openwakeword" and wake.models:
        found.append("listen.wake_word.engine openwakeword: the models of pyopen-wakeword are licensed CC BY-NC-SA "
                     "4.0 (non-commercial use only); engine micro (Apache-2.0) has no such restriction")
    return found
