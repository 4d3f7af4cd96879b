"""Wake word detection on a live 16 kHz int16 stream: several models at once, any of them wakes.

Two engines, both TFLite through the small C library their wheels ship (imported lazily, extras
`.[wake]` and `.[wake-openwakeword]`):

- `micro`: microWakeWord (PyPI pymicro-wakeword, Apache-2.0), what ESPHome devices run. One
  feature front end (40 mel features per 10 ms) feeds every model; each model averages its last
  `sliding_window_size` probabilities and wakes above `probability_cutoff` (both from the model's
  JSON, both overridable per model). About 0.25 % of one x86 core per model.
- `openwakeword`: openWakeWord (PyPI pyopen-wakeword); one mel + embedding front end (80 ms
  steps) feeds every model; cutoff 0.5 and window 1 unless overridden. Its models are CC BY-NC-SA
  4.0 (non-commercial), which `check-config` warns about. About 40x the CPU of `micro`.

`WakeWordDetector.process()` takes blocks of any length and returns the first detection in the
block. After a detection, the refractory period ignores further ones (the models keep running,
so their streaming state stays continuous). The Wyoming wake service can reuse this class as is.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from agent.audio.source import TARGET_RATE, CaptureError
from agent.settings import WAKE_WINDOW_MAX, WakeWordSettings, parse_wake_model

log = logging.getLogger(__name__)

MICRO_BUILTIN = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")
OPENWAKEWORD_BUILTIN = MICRO_BUILTIN + ("hey_rhasspy",)
OPENWAKEWORD_CUTOFF = 0.5     # the engine's own command-line default
PACKAGES = {"micro": ("pymicro_wakeword", "voice-agent[wake]"),
            "openwakeword": ("pyopen_wakeword", "voice-agent[wake-openwakeword]")}


@dataclass(frozen=True)
class Detection:
    model: str
    probability: float
    at_s: float          # stream position (seconds fed to the detector) when the model fired


class WakeWordError(CaptureError):
    """A wake word model cannot be loaded: the listener alerts and retries like a lost device."""

    code = "wake_word_error"


def _import(engine: str) -> Any:
    module, extra = PACKAGES[engine]
    try:
        return __import__(module)
    except ImportError as exc:
        raise WakeWordError(f"listen.wake_word.engine {engine} needs the Python package {module}: "
                            f"pip install '{extra}'") from exc


def _lib(package: Any) -> Path:
    found = next(iter((Path(package.__file__).parent / "lib").glob("*tensorflowlite_c.*")), None)
    if found is None:
        raise WakeWordError(f"{package.__name__} has no tensorflowlite_c library for this platform")
    return found


class _Model:
    """One model's probabilities, averaged over its window, against its cutoff."""

    def __init__(self, name: str, net: Any, cutoff: float, window: int) -> None:
        self.name, self.net, self.cutoff = name, net, cutoff
        self.recent: deque[float] = deque(maxlen=window)
        self.calls = 0

    def push(self, probability: float) -> float | None:
        """The window's mean once the window is full and the mean exceeds the cutoff."""
        self.recent.append(probability)
        if len(self.recent) < (self.recent.maxlen or 1):
            return None
        mean = sum(self.recent) / len(self.recent)
        return mean if mean > self.cutoff else None


class WakeWordDetector:
    """Runs every configured model on the same stream (10 ms / 16 kHz int16 frames or any block)."""

    def __init__(self, settings: WakeWordSettings) -> None:
        self.settings = settings
        self.engine = settings.engine
        self.refractory_s = settings.refractory_s
        self._samples = 0
        self._quiet_until = -1.0
        self.detections = 0
        package = _import(self.engine)
        entries = [parse_wake_model(e) for e in settings.models]
        if not entries or any(e is None for e in entries):
            raise WakeWordError("listen.wake_word.models must name at least one model (name[:cutoff[:window]])")
        if self.engine == "micro":
            self._models = [self._micro(package, *e) for e in entries if e]
            self._features = package.MicroWakeWordFeatures()
        else:
            self._models = [self._openwakeword(package, *e) for e in entries if e]
            self._features = package.OpenWakeWordFeatures.from_builtin()
        log.info("wake word: %s (%s)", ", ".join(f"{m.name}>{m.cutoff:g}/{m.recent.maxlen}" for m in self._models),
                 self.engine)

    @property
    def models(self) -> list[str]:
        return [m.name for m in self._models]

    # --- loading ------------------------------------------------------------------------

    def _find(self, package: Any, name: str, suffix: str, builtin: Any, shipped_by: str) -> Path:
        """A model of that name in the local `model_dir` wins; else the one the package ships."""
        if self.settings.model_dir is not None:
            path = Path(self.settings.model_dir) / f"{name}{suffix}"
            if path.is_file():
                return path
        if name not in builtin:
            raise WakeWordError(f"wake word model {name!r} is neither shipped with {shipped_by} "
                                f"({', '.join(builtin)}) nor in listen.wake_word.model_dir")
        return Path(package.__file__).parent / "models" / f"{name}{suffix}"

    def _micro(self, package: Any, name: str, cutoff: float | None, window: int | None) -> _Model:
        config_path = self._find(package, name, ".json", MICRO_BUILTIN, "pymicro-wakeword")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            micro, tflite = config["micro"], str(config["model"])
            # The JSON names its .tflite: only a plain file name beside it, never a path elsewhere.
            if Path(tflite).name != tflite or not (config_path.parent / tflite).is_file():
                raise ValueError(f"model {tflite!r} must be a .tflite file in the same folder")
            shipped_cutoff, shipped_window = float(micro["probability_cutoff"]), int(micro["sliding_window_size"])
            if not (0 < shipped_cutoff < 1 and 1 <= shipped_window <= WAKE_WINDOW_MAX):
                raise ValueError(f"probability_cutoff must be between 0 and 1 and sliding_window_size "
                                 f"between 1 and {WAKE_WINDOW_MAX}")
            # Window 1 in the engine: it returns each raw probability and _Model does the averaging.
            net = package.MicroWakeWord(
                name, wake_word=str(config.get("wake_word", name)), tflite_model=config_path.parent / tflite,
                probability_cutoff=shipped_cutoff, sliding_window_size=1,
                trained_languages=list(config.get("trained_languages", [])), libtensorflowlite_c_path=_lib(package))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WakeWordError(f"cannot load wake word model {name!r} from {config_path}: {exc}") from exc
        return _Model(name, net, cutoff if cutoff is not None else shipped_cutoff,
                      window if window is not None else shipped_window)

    def _openwakeword(self, package: Any, name: str, cutoff: float | None, window: int | None) -> _Model:
        path = self._find(package, name, ".tflite", OPENWAKEWORD_BUILTIN, "pyopen-wakeword")
        try:
            net = package.OpenWakeWord.from_model(path, libtensorflowlite_c_path=_lib(package))
        except (OSError, ValueError) as exc:
            raise WakeWordError(f"cannot load wake word model {name!r} from {path}: {exc}") from exc
        return _Model(name, net, cutoff if cutoff is not None else OPENWAKEWORD_CUTOFF, window or 1)

    # --- streaming ----------------------------------------------------------------------

    def _probabilities(self, samples: np.ndarray) -> Iterator[tuple[_Model, float]]:
        data = np.ascontiguousarray(samples, dtype=np.int16).tobytes()
        for features in self._features.process_streaming(data):
            for model in self._models:
                if self.engine == "micro":
                    # The net gathers `stride` feature frames per inference and answers 0.0 in between.
                    probability = model.net.process_streaming_prob(features)
                    model.calls += 1
                    if model.calls % model.net.stride == 0 and probability is not None:
                        yield model, probability
                else:
                    for probability in model.net.process_streaming(features):
                        yield model, probability

    def process(self, samples: np.ndarray) -> Detection | None:
        """Feed a block; the first detection in it outside the refractory period, else None."""
        self._samples += len(samples)
        at_s = self._samples / TARGET_RATE
        found: Detection | None = None
        for model, probability in self._probabilities(samples):
            mean = model.push(probability)
            if mean is not None and found is None and at_s >= self._quiet_until:
                found = Detection(model.name, round(mean, 3), round(at_s, 3))
        if found is not None:
            self.detections += 1
            self._quiet_until = at_s + self.refractory_s
        return found

    def close(self) -> None:
        for model in self._models:
            model.net.close()
        close = getattr(self._features, "close", None)
        if close is not None:
            close()
