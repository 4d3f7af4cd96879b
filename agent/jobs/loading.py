"""Audio in, `Loaded` out: the one way each kind of job input becomes the pipeline's audio.

Inbox and spool files, `request/transcribe` (a file or `audio_b64`) and fleet jobs (`audio_b64`
or a fetched URL) all end here, so the limits (inbox.max_bytes, inbox.max_duration_s), the
content hash the transcript cache is keyed by, and the refusals read the same for every source.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

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


def load_audio_file(path: Path, settings: InboxSettings) -> Loaded:
    """Refuse what is not a regular file before opening it: a FIFO would block, a symlink escape."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise AudioError("symbolic links are not taken from the inbox", code="forbidden")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError("not a regular file", code="unsupported_format")
    from agent.audio.wav import decode_file  # numpy: loaded with the first audio, not at start

    audio = decode_file(path, max_bytes=settings.max_bytes, max_duration_s=settings.max_duration_s)
    return Loaded(audio, file_hash(path))


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb", buffering=0) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
