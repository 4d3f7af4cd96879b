"""Audio in, `Loaded` out: the one way each kind of job input becomes the pipeline's audio.

Inbox and spool files, `request/transcribe` (a file or `audio_b64`) and fleet jobs (`audio_b64`
or a fetched URL) all end here, so the limits (inbox.max_bytes, inbox.max_duration_s), the
content hash the transcript cache is keyed by, and the refusals read the same for every source.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from agent.errors import AudioError, RequestError
from agent.jobs.pipeline import Loaded
from agent.settings import InboxSettings


def decode_b64(text: str) -> bytes:
    """An attacker-written `audio_b64` field: strict base64 (no stray characters), or bad_request."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'audio_b64' is not valid base64", code="bad_request") from None


def load_bytes(data: bytes, settings: InboxSettings) -> Loaded:
    """Audio that arrived in memory (a request or a fleet job), under the inbox's size limits."""
    from agent.audio.wav import decode_bytes  # numpy: loaded with the first audio, not at start

    audio = decode_bytes(data, max_bytes=settings.max_bytes, max_duration_s=settings.max_duration_s)
    return Loaded(audio, hashlib.blake2b(data, digest_size=16).hexdigest())


#: The one code for an inbox file that is not a regular file with one name (a symlink, a FIFO, a
#: device, a folder, a hard link), wherever it is met: the feeder, a request, a re-run.
NOT_A_PLAIN_FILE = "forbidden"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # NONBLOCK: a FIFO never blocks


def load_audio_file(path: Path, settings: InboxSettings, *, dir_fd: int | None = None,
                    share_path: bool = True) -> Loaded:
    """A file opened once, without following a symlink (relative to its folder's descriptor when
    given, so a swapped parent cannot redirect it), checked with one fstat, and hashed while the
    decoder reads it: the same bytes are decoded and hashed, and none is read twice. `share_path`:
    an engine may open a clean WAV by `path` itself (only when nobody else can rename its folder)."""
    from agent.audio.wav import decode_open  # numpy: loaded with the first audio, not at start

    try:
        fd = os.open(path.name if dir_fd is not None else path, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV):   # a symlink; a socket or device
            raise AudioError("not a regular file (symbolic links, FIFOs, devices and folders are not taken)",
                             code=NOT_A_PLAIN_FILE) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AudioError("not a regular file (symbolic links, FIFOs, devices and folders are not taken)",
                             code=NOT_A_PLAIN_FILE)
        if st.st_nlink > 1:
            raise AudioError(f"the file has {st.st_nlink} names (a hard link): only a file with one name is "
                             "taken, so nobody can make the agent read a file it was not given", code=NOT_A_PLAIN_FILE)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        hashed = HashingReader(f)
        audio = decode_open(hashed, path if share_path else None, max_bytes=settings.max_bytes,
                            max_duration_s=settings.max_duration_s)
        return Loaded(audio, hashed.hexdigest())


class HashingReader:
    """A read-only file whose content hash is computed from what its reader reads: the bytes read
    in order from the start feed the hash on the way; `hexdigest` reads only what was skipped (a
    decoder that stops early, or seeks past). Seeks and re-reads are passed through."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._hash = hashlib.blake2b(digest_size=16)
        self._upto = 0   # the hash covers bytes [0, _upto)

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        at = self._f.tell()
        data = self._f.read(n)
        self._feed(at, data)
        return data

    def readinto(self, buffer: Any) -> int:
        at = self._f.tell()
        got = self._f.readinto(buffer) or 0
        self._feed(at, memoryview(buffer).cast("B")[:got])
        return got

    def _feed(self, at: int, data: Any) -> None:
        if at <= self._upto < at + len(data):
            self._hash.update(memoryview(data)[self._upto - at:])
            self._upto = at + len(data)

    def hexdigest(self) -> str:
        self._f.seek(self._upto)
        for block in iter(lambda: self._f.read(1 << 20), b""):
            self._hash.update(block)
        return self._hash.hexdigest()
