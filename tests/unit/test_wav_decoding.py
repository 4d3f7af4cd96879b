"""agent.audio.wav: WAV parsing, sample conversion, encoding and hostile headers, in process.

Hostile headers are built by hand (and by hypothesis) so that every malformed file is refused with
a typed AudioError and nothing else. Decoding of files written by sox and espeak-ng (independent,
widely used software) is in tests/e2e/test_audio_formats.py.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audio.wav import WavInfo, decode_bytes, decode_file, encode_wav, is_native, probe, write_wav
from agent.errors import AudioError
from tests.support.audio_errors import expect_error


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


def test_flac_decoded_block_by_block_equals_whole_file_resampling(tmp_path: Path) -> None:
    """The streaming soundfile path gives the samples a whole-array resample of the file gives,
    for stereo 44.1 kHz (resampled), 16 kHz (not) and a length that is no multiple of a block."""
    soundfile = pytest.importorskip("soundfile")
    from agent.audio.pcm import float_to_int16
    from agent.audio.resample import resample
    for rate in (44100, 16000):
        left = tone(440, rate, 9.3)
        stereo = np.stack([left, 0.5 * tone(1000, rate, 9.3)], axis=1)
        path = tmp_path / f"t{rate}.flac"
        soundfile.write(str(path), stereo, rate, format="FLAC", subtype="PCM_16")
        whole, _ = soundfile.read(str(path), dtype="float32")
        expected = float_to_int16(resample(whole.mean(axis=1, dtype=np.float32), rate, 16000))
        got = decode_file(path).samples
        assert len(got) == len(expected)
        assert np.abs(got.astype(np.int32) - expected).max() <= 1


def test_audio_that_cannot_fit_in_memory_is_refused_before_decoding(tmp_path: Path) -> None:
    """Decoded bytes (16 kHz int16 plus an engine's float32 copy: 6 per sample) are checked against
    what is free, from the header alone: a 10 s file needs 960,000 bytes."""
    soundfile = pytest.importorskip("soundfile")
    path = tmp_path / "ten.flac"
    soundfile.write(str(path), np.zeros(80_000, dtype=np.float32), 8000, format="FLAC")
    err = expect_error("too_large", decode_file, path, available_bytes=959_999)
    assert "memory" in err.message
    assert decode_file(path, available_bytes=960_000).duration_s == 10.0
    wav = pcm16(np.zeros(160_000, dtype=np.int16))
    expect_error("too_large", decode_bytes, wav, available_bytes=959_999)
    assert decode_bytes(wav, available_bytes=960_000).duration_s == 10.0


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


def test_unsupported_sample_formats() -> None:
    data = chunk(b"data", bytes(96))
    half_float, pcm48 = fmt_body(3, bits=16), fmt_body(1, bits=48)
    adpcm_ext, odd_guid = extensible_body(2, 1, 16000, 4), extensible_body(1, 1, 16000, 16, guid_tail=bytes(12))
    for fmt in (half_float, pcm48, adpcm_ext, odd_guid):
        expect_error("unsupported_format", decode_bytes, riff(chunk(b"fmt ", fmt), data))


def test_g711_code_words_decode_as_itu_tables_say() -> None:
    """mu-law 0x00/0x7F/0x80/0xFF and A-law 0xD5/0x55/0x2A/0xAA (G.711's extremes and smallest
    steps), as plain fmt tags 7/6 and inside WAVE_FORMAT_EXTENSIBLE, at 16 kHz so no resampling."""
    codes = {7: (bytes([0x00, 0x7F, 0x80, 0xFF]), [-32124, 0, 32124, 0]),
             6: (bytes([0xD5, 0x55, 0x2A, 0xAA]), [8, -8, -32256, 32256])}
    for tag, (raw, expected) in codes.items():
        for fmt in (fmt_body(tag, bits=8, rate=16000), extensible_body(tag, 1, 16000, 8)):
            audio = decode_bytes(riff(chunk(b"fmt ", fmt), chunk(b"data", raw)))
            assert audio.samples.tolist() == expected, (tag, audio.samples)
    expect_error("corrupt", decode_bytes, riff(chunk(b"fmt ", fmt_body(7, bits=16)), chunk(b"data", bytes(8))))


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    expect_error("forbidden", decode_file, fifo)
    expect_error("forbidden", decode_file, tmp_path)


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
