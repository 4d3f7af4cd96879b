"""agent.audio.wav against files written by independent programs: espeak-ng speech, every format
variant from sox, and other containers with and without soundfile.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.audio import wav
from agent.audio.wav import WavInfo, decode_bytes, decode_file, is_native, probe
from tests.support.audio_errors import expect_error


HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="espeak-ng and sox are needed for real speech files")

TEXT = "The quick brown fox jumps over the lazy dog. Testing one, two, three."

# name -> sox output options applied to the espeak file (22050 Hz mono s16)
VARIANTS = {
    "s16_22k": [],
    "u8": ["-b", "8"],
    "s24": ["-b", "24"],
    "s32": ["-b", "32"],
    "f32": ["-e", "floating-point", "-b", "32"],
    "f64": ["-e", "floating-point", "-b", "64"],
    "stereo": ["-c", "2"],
    "r44k": ["-r", "44100"],
    "r48k": ["-r", "48000"],
    "r8k": ["-r", "8000"],
    "native16k": ["-r", "16000"],
    "f32_stereo_44k": ["-e", "floating-point", "-b", "32", "-c", "2", "-r", "44100"],
    "s24_6ch_96k": ["-b", "24", "-c", "6", "-r", "96000"],
}


def sox(*args: str | Path) -> None:
    subprocess.run(["sox", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the espeak reference and every sox variant of it."""
    if not HAVE_TOOLS:
        pytest.skip("espeak-ng and sox are needed for real speech files")
    d = tmp_path_factory.mktemp("speech")
    subprocess.run(["espeak-ng", "-w", str(d / "ref.wav"), TEXT], check=True, capture_output=True)
    for name, opts in VARIANTS.items():
        sox(d / "ref.wav", *opts, d / f"{name}.wav")
    sox(d / "ref.wav", "-e", "u-law", d / "ulaw.wav")
    sox(d / "ref.wav", "-e", "a-law", d / "alaw.wav")
    sox(d / "ref.wav", "-e", "ima-adpcm", d / "adpcm.wav")
    sox(d / "ref.wav", d / "speech.flac")
    sox(d / "ref.wav", d / "speech.ogg")
    return d


def soxi_duration(path: Path) -> float:
    out = subprocess.run(["soxi", "-D", str(path)], check=True, capture_output=True, text=True)
    return float(out.stdout)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n].astype(np.float64), b[:n].astype(np.float64))[0, 1])


@needs_tools
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_speech_variants_decode_to_16k_mono(speech: Path, name: str) -> None:
    path = speech / f"{name}.wav"
    audio = decode_file(path)
    assert audio.samples.dtype == np.int16 and audio.samples.ndim == 1
    assert abs(audio.duration_s - soxi_duration(path)) <= 0.020
    reference = decode_file(speech / "ref.wav").samples
    # 8 kHz keeps only the band below 4 kHz, so it matches the full-band reference less closely
    assert corr(audio.samples, reference) > (0.98 if name == "r8k" else 0.995)
    # ...and sox's own conversion of the same file to 16 kHz mono agrees with ours
    sox(path, "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", speech / f"sox_{name}.wav")
    assert corr(audio.samples, decode_file(speech / f"sox_{name}.wav").samples) > 0.998


@needs_tools
def test_probe_reads_header_fields(speech: Path) -> None:
    frames = int(round(soxi_duration(speech / "ref.wav") * 22050))
    assert probe(speech / "ref.wav") == WavInfo("pcm", 22050, 1, 16, frames)
    info = probe(speech / "f32_stereo_44k.wav")
    assert (info.format, info.sample_rate, info.channels, info.bits) == ("float", 44100, 2, 32)
    info = probe(speech / "s24_6ch_96k.wav")  # sox writes this as WAVE_FORMAT_EXTENSIBLE
    assert (info.format, info.sample_rate, info.channels, info.bits) == ("pcm", 96000, 6, 24)
    assert info.duration_s == pytest.approx(soxi_duration(speech / "s24_6ch_96k.wav"), abs=1e-3)


@needs_tools
def test_native_file_is_passed_through_with_its_path(speech: Path) -> None:
    path = speech / "native16k.wav"
    assert is_native(probe(path))
    audio = decode_file(path)
    assert audio.path == path
    raw = path.read_bytes()
    assert np.array_equal(audio.samples, np.frombuffer(raw[-2 * len(audio.samples) :], dtype="<i2"))
    assert decode_bytes(raw).path is None  # no file to point at
    for name in ("s16_22k", "stereo", "f32", "r48k"):
        assert not is_native(probe(speech / f"{name}.wav"))
        assert decode_file(speech / f"{name}.wav").path is None


@needs_tools
@pytest.mark.parametrize("name", ["speech.flac", "speech.ogg"])
def test_other_containers_without_soundfile(speech: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` fail
    err = expect_error("unsupported_format", decode_file, speech / name)
    assert "voice-agent[formats]" in str(err)
    expect_error("unsupported_format", decode_bytes, (speech / name).read_bytes())
    expect_error("unsupported_format", probe, speech / name)


@needs_tools
@pytest.mark.parametrize("name", ["speech.flac", "speech.ogg"])
def test_other_containers_with_soundfile(speech: Path, name: str) -> None:
    pytest.importorskip("soundfile")
    audio = decode_file(speech / name)
    assert audio.path is None
    assert abs(audio.duration_s - soxi_duration(speech / "ref.wav")) <= 0.020
    assert corr(audio.samples, decode_file(speech / "ref.wav").samples) > 0.99
    assert np.array_equal(decode_bytes((speech / name).read_bytes()).samples, audio.samples)
    assert probe(speech / name).format == name.split(".")[1]
    expect_error("too_long", decode_file, speech / name, max_duration_s=1.0)


@needs_tools
@pytest.mark.parametrize("name, kind", [("ulaw", "mulaw"), ("alaw", "alaw")])
def test_g711_wav_decodes_like_sox(speech: Path, name: str, kind: str) -> None:
    """G.711 (sox's own encoder) decodes to what sox itself decodes it to, resampled alike."""
    path = speech / f"{name}.wav"
    sox(path, "-e", "signed", "-b", "16", speech / f"{name}_pcm.wav")
    audio = decode_file(path)
    assert probe(path).format == kind and probe(path).bits == 8
    assert np.array_equal(audio.samples, decode_file(speech / f"{name}_pcm.wav").samples)


@needs_tools
def test_compressed_wav_is_unsupported(speech: Path) -> None:
    err = expect_error("unsupported_format", decode_file, speech / "adpcm.wav")
    assert "format tag" in str(err)
    expect_error("unsupported_format", probe, speech / "adpcm.wav")


@needs_tools
def test_too_long_is_decided_from_the_header(speech: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sample_reads(*args: object) -> None:
        raise AssertionError("samples were read before the duration check")

    monkeypatch.setattr(wav._FileSource, "samples", no_sample_reads)
    monkeypatch.setattr(wav._BytesSource, "samples", no_sample_reads)
    err = expect_error("too_long", decode_file, speech / "r48k.wav", max_duration_s=2.0)
    assert "limit is 2 s" in str(err)
    expect_error("too_long", decode_bytes, (speech / "r48k.wav").read_bytes(), max_duration_s=2.0)


@needs_tools
def test_too_large_is_decided_before_opening(speech: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = speech / "r48k.wav"
    size = path.stat().st_size

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened before the size check")

    monkeypatch.setattr(wav, "open", no_open, raising=False)
    expect_error("too_large", decode_file, path, max_bytes=size - 1)
    monkeypatch.undo()
    assert decode_file(path, max_bytes=size, max_duration_s=10.0).samples.size > 0
    expect_error("too_large", decode_bytes, path.read_bytes(), max_bytes=1000)
