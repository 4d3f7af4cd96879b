"""PortAudio: importing it quietly, listing input devices and resolving a configured device.

A device can be configured by index or by (part of) its name, because PortAudio's indexes are not
stable across replugs and reboots; the microphone source resolves it at every (re)start. Kept
out of `agent.audio.capture` because listing devices (`voice-agent devices`) needs none of the
sources.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from agent.audio.source import CaptureError


def import_pyaudio() -> Any:
    """PyAudio, imported only when a microphone is used so the agent runs without it."""
    try:
        import pyaudio
    except ImportError as exc:
        raise CaptureError("PyAudio is not installed (pip install 'voice-agent[mic]')") from exc
    _quiet_alsa()
    return pyaudio


_alsa_handler: Any = None


def _quiet_alsa() -> None:
    """Route ALSA's probing chatter (unknown PCM cards.pcm.rear, ...) away from the journal."""
    global _alsa_handler
    if _alsa_handler is not None:
        return
    _alsa_handler = False
    name = ctypes.util.find_library("asound")
    if not name:
        return
    try:
        lib = ctypes.CDLL(name)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_char_p)
        _alsa_handler = handler_type(lambda *args: None)  # kept referenced: ALSA holds the pointer
        lib.snd_lib_error_set_handler(_alsa_handler)
    except (OSError, AttributeError):
        pass


def _input_devices(pa: Any) -> list[dict[str, Any]]:
    try:
        default = pa.get_default_input_device_info()["index"]
    except (OSError, IOError):
        default = None
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info.get("maxInputChannels", 0)) > 0:
            devices.append({"index": index, "name": info["name"],
                            "max_input_channels": int(info["maxInputChannels"]),
                            "default_sample_rate": float(info["defaultSampleRate"]),
                            "default": index == default})
    return devices


def resolve_device(pa: Any, device: str | int | None) -> int | None:
    """PortAudio index for an index, a digit string or a case-insensitive name substring."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "default")):
        return None
    inputs = _input_devices(pa)
    if isinstance(device, int) or device.strip().isdigit():
        index = int(device)
        if any(d["index"] == index for d in inputs):
            return index
        raise CaptureError(f"no input device with index {index}", device=str(device))
    wanted = device.strip().lower()
    exact = [d for d in inputs if d["name"].lower() == wanted]
    matches = exact or [d for d in inputs if wanted in d["name"].lower()]
    if not matches:
        names = ", ".join(d["name"] for d in inputs) or "none"
        raise CaptureError(f"no input device matches {device!r} (inputs: {names})", device=str(device))
    return int(matches[0]["index"])


def list_devices() -> list[dict[str, Any]]:
    """Input-capable devices: index, name, max_input_channels, default_sample_rate, default."""
    pyaudio = import_pyaudio()
    pa = pyaudio.PyAudio()
    try:
        return _input_devices(pa)
    finally:
        pa.terminate()
