"""Tests for agent.audio.wav and agent.audio.resample.

Real speech comes from espeak-ng and every format variant from sox, so the decoder is checked
against files written by independent, widely used software, and the resampler against sox's
own. Hostile headers are built by hand (and by hypothesis) because no well-behaved writer
produces them.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audio import wav
from agent.audio.resample import output_length, resample, resample_blocks
from agent.audio.wav import WavInfo, decode_bytes, decode_file, encode_wav, is_native, probe, write_wav
from agent.errors import AudioError

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


# --------------------------------------------------------------------------- hand-made WAVs


def chunk(cid: bytes, body: bytes, size: int | None = None) -> bytes:
    """A RIFF chunk with its pad byte; `size` lets a test lie about the length."""
    return struct.pack("<4sI", cid, len(body) if size is None else size) + body + b"\0" * (len(body) & 1)


def fmt_body(
    tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16, align: int | None = None
) -> bytes:
    align = channels * ((bits + 7) // 8) if align is None else align
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def extensible_body(sub_tag: int, channels: int, rate: int, bits: int, guid_tail: bytes | None = None) -> bytes:
    tail = bytes.fromhex("000010008000 00aa00389b71") if guid_tail is None else guid_tail
    guid = struct.pack("<I", sub_tag) + tail
    return fmt_body(0xFFFE, channels, rate, bits) + struct.pack("<HHI", 22, bits, 0) + guid


def riff(*chunks: bytes, magic: bytes = b"RIFF", form: bytes = b"WAVE") -> bytes:
    body = form + b"".join(chunks)
    return struct.pack("<4sI", magic, len(body)) + body


def pcm16(samples: list[int] | np.ndarray, channels: int = 1, rate: int = 16000, **fmt: int) -> bytes:
    data = np.asarray(samples, dtype="<i2").tobytes()
    return riff(chunk(b"fmt ", fmt_body(1, channels, rate, 16, **fmt)), chunk(b"data", data))


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def level_db(x: np.ndarray) -> float:
    """RMS level of the middle half (edges hold the filter's start-up)."""
    mid = x[len(x) // 4 : -len(x) // 4].astype(np.float64)
    return 20 * math.log10(math.sqrt(float(np.mean(mid**2))) + 1e-30)


def expect_error(code: str, fn, *args, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, f"expected {code}, got {info.value.code}: {info.value}"
    assert str(info.value), "messages must not be empty"
    return info.value


# --------------------------------------------------------------------------- real speech


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


def test_native_detection_needs_all_four_properties() -> None:
    assert is_native(WavInfo("pcm", 16000, 1, 16, 10))
    assert not is_native(WavInfo("float", 16000, 1, 32, 10))
    assert not is_native(WavInfo("pcm", 16000, 2, 16, 10))
    assert not is_native(WavInfo("pcm", 16000, 1, 24, 10))
    assert not is_native(WavInfo("pcm", 44100, 1, 16, 10))
    assert not is_native(WavInfo("flac", 16000, 1, 16, 10))


def test_streaming_header_decodes_but_is_not_shared(tmp_path: Path) -> None:
    samples = np.arange(-500, 500, dtype=np.int16)
    data = samples.tobytes()
    for size in (0xFFFFFFFF, 0):
        path = tmp_path / f"stream{size}.wav"
        path.write_bytes(riff(chunk(b"fmt ", fmt_body()), struct.pack("<4sI", b"data", size) + data))
        audio = decode_file(path)
        assert np.array_equal(audio.samples, samples)
        assert audio.path is None  # other programs would trust the bogus size


# --------------------------------------------------------------------------- other containers


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


def test_mp3_via_soundfile(tmp_path: Path) -> None:
    soundfile = pytest.importorskip("soundfile")
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    path = tmp_path / "tone.mp3"
    soundfile.write(str(path), tone(440, 44100, 1.0), 44100, format="MP3")
    audio = decode_file(path)
    assert abs(audio.duration_s - 1.0) < 0.1  # encoder padding varies
    spectrum = np.abs(np.fft.rfft(audio.samples.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16000 / len(audio.samples) - 440) < 5


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"fLaC\0\0\0\x22", "FLAC"),
        (b"OggS\0\2\0\0", "OGG"),
        (b"ID3\4\0\0\0\0", "MP3"),
        (b"\xff\xfb\x90\x64\0\0\0\0", "MP3"),
    ],
)
def test_known_magic_without_soundfile_is_unsupported(
    head: bytes, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)
    err = expect_error("unsupported_format", decode_bytes, head + bytes(100))
    assert kind in str(err)


def test_undecodable_containers_are_unsupported() -> None:
    expect_error("unsupported_format", decode_bytes, b"\0\0\0\x20ftypM4A " + bytes(64))
    expect_error("unsupported_format", decode_bytes, riff(chunk(b"avih", bytes(56)), form=b"AVI "))
    expect_error("unsupported_format", decode_bytes, b"RIFX" + bytes(60))


# --------------------------------------------------------------------------- error codes


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_error("empty", decode_file, path)
    expect_error("empty", probe, path)
    expect_error("empty", decode_bytes, b"")


def test_header_only_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "header.wav"
    path.write_bytes(encode_wav(np.zeros(0, dtype=np.int16)))
    assert path.stat().st_size == 44
    expect_error("empty", decode_file, path)
    expect_error("empty", probe, path)
    # an empty data chunk followed by metadata is still empty, not metadata-as-audio
    trailing_list = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", b""), chunk(b"LIST", b"INFOtest"))
    expect_error("empty", decode_bytes, trailing_list)
    # less than one whole frame
    expect_error("empty", decode_bytes, riff(chunk(b"fmt ", fmt_body(channels=2)), chunk(b"data", b"\1\2")))


def test_random_bytes_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = expect_error("corrupt", decode_file, path)
    assert "RIFF" in str(err)
    expect_error("corrupt", decode_bytes, b"hello")


def test_truncated_header_is_corrupt() -> None:
    full = encode_wav(np.arange(100, dtype=np.int16))
    for cut in (3, 8, 11, 12, 20, 30, 40):
        expect_error("corrupt", decode_bytes, full[:cut])


def test_lying_data_size_is_corrupt(tmp_path: Path) -> None:
    good = encode_wav(np.ones(2000, dtype=np.int16))
    path = tmp_path / "liar.wav"
    path.write_bytes(good[:40] + struct.pack("<I", 1_000_000) + good[44:])
    err = expect_error("corrupt", decode_file, path)
    assert "1,000,000" in str(err) and f"{len(good):,}" in str(err)


def test_lying_chunk_sizes_are_corrupt() -> None:
    expect_error("corrupt", decode_bytes, riff(chunk(b"LIST", b"abcd", size=10**9), chunk(b"fmt ", fmt_body())))
    expect_error("corrupt", decode_bytes, riff(chunk(b"fmt ", fmt_body(), size=400), chunk(b"data", b"\0\0")))


@pytest.mark.parametrize(
    "fmt",
    [
        fmt_body(channels=0, align=2),
        fmt_body(rate=0),
        fmt_body(rate=10_000_000),
        fmt_body(rate=999),
        fmt_body(align=3),  # block align mismatch
        fmt_body(bits=0, align=2),
        fmt_body()[:14],  # short fmt chunk
        extensible_body(1, 1, 16000, 16)[:30],  # short extensible fmt
    ],
    ids=["zero_channels", "rate_0", "rate_10M", "rate_999", "block_align", "bits_0", "short_fmt", "short_ext"],
)
def test_bad_fmt_is_corrupt(fmt: bytes) -> None:
    expect_error("corrupt", decode_bytes, riff(chunk(b"fmt ", fmt), chunk(b"data", bytes(64))))


def test_missing_chunks_are_corrupt() -> None:
    err = expect_error("corrupt", decode_bytes, riff(chunk(b"data", bytes(64))))
    assert "fmt" in str(err)
    err = expect_error("corrupt", decode_bytes, riff(chunk(b"fmt ", fmt_body()), chunk(b"LIST", b"INFO")))
    assert "data" in str(err)
    expect_error("corrupt", decode_bytes, riff(*[chunk(b"junk", b"")] * 5000))


@needs_tools
@pytest.mark.parametrize("name", ["ulaw", "alaw", "adpcm"])
def test_compressed_wav_is_unsupported(speech: Path, name: str) -> None:
    err = expect_error("unsupported_format", decode_file, speech / f"{name}.wav")
    assert "format tag" in str(err)
    expect_error("unsupported_format", probe, speech / f"{name}.wav")


def test_unsupported_sample_formats() -> None:
    data = chunk(b"data", bytes(96))
    half_float, pcm48 = fmt_body(3, bits=16), fmt_body(1, bits=48)
    ulaw_ext, odd_guid = extensible_body(7, 1, 16000, 8), extensible_body(1, 1, 16000, 16, guid_tail=bytes(12))
    for fmt in (half_float, pcm48, ulaw_ext, odd_guid):
        expect_error("unsupported_format", decode_bytes, riff(chunk(b"fmt ", fmt), data))


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


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    expect_error("corrupt", decode_file, fifo)
    expect_error("corrupt", decode_file, tmp_path)


# --------------------------------------------------------------------------- sample formats


def test_exact_conversion_of_every_sample_width() -> None:
    def decode(tag: int, bits: int, data: bytes, channels: int = 1) -> list[int]:
        wav_bytes = riff(chunk(b"fmt ", fmt_body(tag, channels, 16000, bits)), chunk(b"data", data))
        return decode_bytes(wav_bytes).samples.tolist()

    assert decode(1, 8, bytes([0, 128, 255, 129])) == [-32768, 0, 32512, 256]
    s24 = [-(2**23), 2**23 - 1, 0, 256, -256, 128]
    packed = b"".join(v.to_bytes(3, "little", signed=True) for v in s24)
    assert decode(1, 24, packed) == [-32768, 32767, 0, 1, -1, 0]
    s32 = np.array([-(2**31), 2**31 - 1, 65536, -65536, 0], dtype="<i4").tobytes()
    assert decode(1, 32, s32) == [-32768, 32767, 1, -1, 0]
    floats = [-2.0, 1.5, 0.5, -0.25, math.nan, math.inf, -math.inf, 0.0]
    expected = [-32768, 32767, 16384, -8192, 0, 32767, -32768, 0]
    assert decode(3, 32, np.array(floats, dtype="<f4").tobytes()) == expected
    assert decode(3, 64, np.array(floats + [1e300], dtype="<f8").tobytes()) == expected + [32767]
    # 12-bit samples sit left-justified in 16-bit containers
    assert decode(1, 12, np.array([16, -16], dtype="<i2").tobytes()) == [16, -16]


def test_extensible_float_and_pcm() -> None:
    floats = np.array([0.5, -0.5, 0.25], dtype="<f4").tobytes()
    audio = decode_bytes(riff(chunk(b"fmt ", extensible_body(3, 1, 16000, 32)), chunk(b"data", floats)))
    assert audio.samples.tolist() == [16384, -16384, 8192]
    ints = np.array([1, -2, 3], dtype="<i2").tobytes()
    audio = decode_bytes(riff(chunk(b"fmt ", extensible_body(1, 1, 16000, 16)), chunk(b"data", ints)))
    assert audio.samples.tolist() == [1, -2, 3]


def test_downmix_never_overflows() -> None:
    stereo = pcm16([32767, 32767, -32768, -32768, 32767, -32768, 1000, 3000], channels=2)
    assert decode_bytes(stereo).samples.tolist() == [32767, -32768, 0, 2000]
    six = pcm16([32767] * 6 * 10, channels=6)
    assert decode_bytes(six).samples.tolist() == [32767] * 10
    s32 = np.array([2**31 - 1] * 8, dtype="<i4").tobytes()
    wav4 = riff(chunk(b"fmt ", fmt_body(1, 4, 16000, 32)), chunk(b"data", s32))
    assert decode_bytes(wav4).samples.tolist() == [32767, 32767]


def test_chunk_walk_handles_padding_unknown_chunks_and_order() -> None:
    samples = np.array([5, -5, 7, -7], dtype="<i2")
    data = chunk(b"data", samples.tobytes())
    odd_list = chunk(b"LIST", b"INFOabc")  # 7 bytes + pad byte
    for wav_bytes in (
        riff(chunk(b"fmt ", fmt_body()), odd_list, chunk(b"fact", b"\4\0\0\0"), data),
        riff(chunk(b"JUNK", bytes(28)), odd_list, chunk(b"fmt ", fmt_body()), data, odd_list),
        riff(data, odd_list, chunk(b"fmt ", fmt_body())),  # fmt after data is legal RIFF
    ):
        assert decode_bytes(wav_bytes).samples.tolist() == samples.tolist()
    # a data size that is not a whole number of frames drops the partial frame
    partial = riff(chunk(b"fmt ", fmt_body(channels=2)), chunk(b"data", samples.tobytes() + b"\1\2"))
    assert len(decode_bytes(partial).samples) == 2


def test_rf64_uses_the_ds64_size() -> None:
    samples = np.arange(50, dtype="<i2")
    ds64 = struct.pack("<QQQI", 0, samples.nbytes, len(samples), 0)
    data = chunk(b"data", samples.tobytes(), size=0xFFFFFFFF)
    rf64 = riff(chunk(b"ds64", ds64), chunk(b"fmt ", fmt_body()), data, magic=b"RF64")
    audio = decode_bytes(rf64 + chunk(b"LIST", b"INFO"))  # trailing metadata is not audio
    assert audio.samples.tolist() == samples.tolist()


def test_decoding_at_16k_without_native_format_keeps_length() -> None:
    stereo = pcm16(np.arange(2000, dtype=np.int16), channels=2)
    assert len(decode_bytes(stereo).samples) == 1000


# --------------------------------------------------------------------------- resampler


def test_resampler_rejects_aliases_by_40_db() -> None:
    x = tone(12000, 48000)
    y = resample(x, 48000, 16000)
    assert level_db(y) - level_db(x) <= -40
    for freq in (8500, 10000, 15000, 20000):  # the whole band that would fold back
        assert level_db(resample(tone(freq, 48000), 48000, 16000)) - level_db(tone(freq, 48000)) <= -60


@pytest.mark.parametrize("src", [8000, 11025, 22050, 32000, 44100, 48000, 96000, 44101])
def test_resampler_passes_1k_within_half_db_at_the_right_frequency(src: int) -> None:
    x = tone(1000, src)
    y = resample(x, src, 16000)
    assert abs(level_db(y) - level_db(x)) <= 0.5
    spectrum = np.abs(np.fft.rfft(y[4000:12000].astype(np.float64) * np.hanning(8000)))
    assert np.argmax(spectrum) * 16000 / 8000 == pytest.approx(1000, abs=2)


@pytest.mark.parametrize(
    "src, dst", [(48000, 16000), (44100, 16000), (8000, 16000), (22050, 16000), (44101, 16000), (16000, 44100)]
)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 441, 1000, 44099, 100_003])
def test_resampler_length(src: int, dst: int, n: int) -> None:
    y = resample(np.zeros(n, dtype=np.float32), src, dst)
    assert y.dtype == np.float32
    assert len(y) == output_length(n, src, dst) == math.ceil(n * dst / src)


def test_resampler_keeps_dc_and_is_identity_for_equal_rates() -> None:
    for src in (44100, 48000, 8000, 44101):
        y = resample(np.full(src, 0.25, dtype=np.float32), src, 16000)
        assert np.allclose(y[200:-200], 0.25, atol=1e-4)
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    assert np.array_equal(resample(x, 16000, 16000), x)
    assert resample(x.astype(np.int16), 16000, 16000).dtype == np.float32


def test_resampler_matches_direct_convolution() -> None:
    """The blocked polyphase matrix products equal the textbook sum for every output sample."""
    from agent.audio.resample import _Design

    rng = np.random.default_rng(3)
    for src, n in ((44100, 3000), (48000, 5000), (8000, 700), (44101, 900)):
        x = rng.standard_normal(n).astype(np.float32)
        y = resample(x, src, 16000)
        design = _Design.make(src, 16000)
        for k in rng.integers(0, len(y), 40):
            base, frac = divmod(int(k) * design.down, design.up)
            taps = design.kernel(np.array([frac / design.up]))[0]
            idx = np.arange(base - design.reach, base + design.reach + 1)
            ok = (idx >= 0) & (idx < n)
            assert y[k] == pytest.approx(float(np.dot(x[idx[ok]], taps[ok])), abs=3e-4)


def test_resampler_input_validation() -> None:
    with pytest.raises(ValueError):
        resample(np.zeros((2, 10)), 48000)
    with pytest.raises(ValueError):
        resample(np.zeros(10), 0)


def test_resampler_speed_60s_48k() -> None:
    x = np.random.default_rng(0).standard_normal(48000 * 60).astype(np.float32) * 0.1
    resample(x[:48000], 48000)  # warm up
    best = min(_timed(resample, x, 48000) for _ in range(3))
    assert best < 1.0, f"60 s of 48 kHz took {best:.2f} s"


def test_resampler_memory_is_bounded_for_30_min_48k() -> None:
    """30 minutes at 48 kHz streamed through resample_blocks needs only MBs of work space."""
    n_in = 48000 * 60 * 30

    def read(start: int, stop: int) -> np.ndarray:
        return np.full(stop - start, 0.1, dtype=np.float32)

    tracemalloc.start()
    try:
        total = sum(len(block) for block in resample_blocks(read, n_in, 48000, 16000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 16000 * 60 * 30
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def _timed(fn, *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- writing


def test_encode_decode_round_trip() -> None:
    samples = np.random.default_rng(5).integers(-32768, 32768, 16000, dtype=np.int16)
    data = encode_wav(samples)
    assert isinstance(data, bytes) and len(data) == 44 + 2 * len(samples)
    audio = decode_bytes(data)
    assert np.array_equal(audio.samples, samples)
    assert decode_bytes(bytearray(data)).samples.tolist() == samples.tolist()
    from_float = encode_wav(np.array([0.5, -2.0, 1.0], dtype=np.float32))
    assert from_float[44:] == np.array([16384, -32768, 32767], "<i2").tobytes()
    assert len(decode_bytes(encode_wav(samples, 8000)).samples) == 32000


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_wav(np.zeros((2, 10), dtype=np.int16))
    with pytest.raises(ValueError):
        encode_wav(np.array([40000], dtype=np.int32))
    with pytest.raises(ValueError):
        encode_wav(np.zeros(10, dtype=np.int16), sample_rate=0)
    assert decode_bytes(encode_wav(np.array([1, 2], dtype=np.int64))).samples.tolist() == [1, 2]


def test_write_wav_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spool.wav"
    samples = np.arange(-100, 100, dtype=np.int16)
    write_wav(path, samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.wav"]
    audio = decode_file(path)
    assert audio.path == path and np.array_equal(audio.samples, samples)
    write_wav(path, samples[:10])  # replacing works
    assert decode_file(path).samples.tolist() == samples[:10].tolist()

    def failing_replace(src: str, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_wav(path, samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.wav"]  # no temp file left
    assert decode_file(path).samples.tolist() == samples[:10].tolist()  # old content intact


# --------------------------------------------------------------------------- hostile input


def _must_only_raise_audio_error(data: bytes) -> None:
    start = time.perf_counter()
    try:
        audio = decode_bytes(data, max_bytes=1 << 20, max_duration_s=60)
    except AudioError as exc:
        assert exc.code in {"empty", "corrupt", "unsupported_format", "too_long", "too_large"}
    else:
        assert audio.samples.dtype == np.int16 and audio.samples.ndim == 1
    assert time.perf_counter() - start < 1.0


def _base_files() -> list[bytes]:
    rng = np.random.default_rng(11)
    s16 = rng.integers(-3000, 3000, 200, dtype=np.int16)
    s24 = riff(chunk(b"fmt ", extensible_body(1, 2, 44100, 24)), chunk(b"LIST", b"INFOx"), chunk(b"data", bytes(300)))
    f32 = riff(chunk(b"fmt ", fmt_body(3, 1, 8000, 32)), chunk(b"fact", bytes(4)), chunk(b"data", bytes(400)))
    return [encode_wav(s16), encode_wav(s16, 48000), s24, f32]


BASES = _base_files()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_audio_error(data: bytes) -> None:
    _must_only_raise_audio_error(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"FORM"]), st.binary(max_size=999))
def test_known_magic_followed_by_garbage(magic: bytes, rest: bytes) -> None:
    _must_only_raise_audio_error(magic + rest)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(BASES),
    st.lists(st.tuples(st.integers(0, 79), st.integers(0, 255)), max_size=8),
    st.one_of(st.none(), st.integers(0, 600)),
)
def test_mutated_headers_only_raise_audio_error(
    base: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(base)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    _must_only_raise_audio_error(bytes(data[:cut] if cut is not None else data))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(BASES),
    st.integers(12, 72).map(lambda x: x - x % 4),
    st.sampled_from([0, 1, 2, 3, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 1000, 384000, 383999, 44101]),
)
def test_hostile_32bit_fields(base: bytes, pos: int, value: int) -> None:
    """Sizes and rates set to extremes, aligned on the 32-bit fields of the header."""
    data = bytearray(base)
    data[pos : pos + 4] = struct.pack("<I", value)
    _must_only_raise_audio_error(bytes(data))
