"""An inbox file is opened once, fstat'ed once and hashed from the bytes the decoder reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from agent.errors import AudioError
from agent.jobs.loading import load_audio_file
from agent.settings import InboxSettings
from tests.support.wavs import tone_wav


def whole_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def load(folder: Path, name: str):
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return load_audio_file(folder / name, InboxSettings(path=str(folder)), dir_fd=fd)
    finally:
        os.close(fd)


def bytes_read() -> int:
    """What this thread has read so far (the kernel's count: every read, whoever makes it)."""
    with open("/proc/thread-self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.mark.parametrize("rate", [16000, 44100])
def test_the_hash_is_the_whole_files_and_the_file_is_read_once(tmp_path: Path, rate: int) -> None:
    data = tone_wav(2.0, rate=rate) + b"LIST" + (100).to_bytes(4, "little") + bytes(100)   # never decoded
    (tmp_path / "a.wav").write_bytes(data)
    load(tmp_path, "a.wav")   # imports done: only the file's own reads are counted below
    before = bytes_read()
    loaded = load(tmp_path, "a.wav")
    read = bytes_read() - before
    assert loaded.content_hash == whole_hash(data)
    assert len(loaded.audio.samples) == 32000 and loaded.audio.samples.dtype == np.int16
    assert read < 1.2 * len(data), f"{read} bytes read for a {len(data)}-byte file: read twice"


def test_anything_but_a_regular_file_with_one_name_is_refused_with_one_code(tmp_path: Path) -> None:
    (tmp_path / "real.wav").write_bytes(tone_wav(0.2))
    os.link(tmp_path / "real.wav", tmp_path / "hard.wav")
    os.symlink(tmp_path / "real.wav", tmp_path / "soft.wav")
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "dir.wav").mkdir()
    for name in ("hard.wav", "soft.wav", "pipe.wav", "dir.wav"):
        with pytest.raises(AudioError) as exc:
            load(tmp_path, name)
        assert exc.value.code == "forbidden", (name, exc.value)


@pytest.mark.parametrize("mode,shares", [(0o755, True), (0o1770, True), (0o770, False), (0o777, False)])
def test_engines_get_a_path_only_when_nobody_else_can_rename_the_inbox_folders(tmp_path: Path, mode: int,
                                                                               shares: bool) -> None:
    """In a group-writable inbox without the sticky bit, `.processing/` could be swapped after the
    check: engines then get the samples, never a path that might lead elsewhere."""
    from agent.sources.inbox import Inbox

    (tmp_path / "inbox").mkdir()
    os.chmod(tmp_path / "inbox", mode)
    box = Inbox(InboxSettings(path=str(tmp_path / "inbox")), lambda: None)
    box.start()
    box.stop()
    try:
        (box.path / "a.wav").write_bytes(tone_wav(0.2))
        claimed = box.claim("a.wav")
        assert claimed is not None and box.shares_paths is shares
        loaded = load_audio_file(claimed.path, box.settings, dir_fd=box.processing_fd, share_path=box.shares_paths)
        assert loaded.audio.path == (claimed.path if shares else None)
    finally:
        box.close()
