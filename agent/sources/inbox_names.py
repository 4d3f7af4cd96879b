"""Names in the inbox's folders: what a claimed or finished file is called, and the small files
beside it (pending record, job id). Read-only, and always relative to a folder's open descriptor
(never a path that could lead through a symlink someone swapped in): every write of a finish stays
in agent.sources.inbox, where the crash tests inject their failures step by step."""

from __future__ import annotations

import errno
import hashlib
import os
import stat

#: A finished file's record, by outcome (True: processed/, False: failed/).
RECORD_SUFFIX = {True: ".json", False: ".error.json"}
#: The record while its finish is under way: `.<final name><suffix>` beside where the audio goes.
#: Distinct per outcome, so a restart knows the record's name even when processed/ and failed/
#: are the same folder.
PENDING_SUFFIX = {True: ".ok.pending", False: ".failed.pending"}
JOB_ID = ".job"

#: Longest file name the filesystem takes; the names derived from an audio file's name (record,
#: pending record, job id, earlier versions' intent and temp files) add up to 24 bytes, so a
#: longer name is shortened for them.
NAME_MAX = 255
_DERIVED_ROOM = 24


def fit_name(name: str) -> str:
    """`name`, or when a name derived from it would exceed NAME_MAX bytes, its stem cut short plus
    a hash of the whole name (so two long names stay distinct), extension kept."""
    if len(os.fsencode(name)) + _DERIVED_ROOM <= NAME_MAX:
        return name
    stem, dot, ext = name.rpartition(".")
    if not stem or len(ext) > 16:
        stem, dot, ext = name, "", ""
    tag = "~" + hashlib.blake2b(os.fsencode(name), digest_size=4).hexdigest()
    budget = NAME_MAX - _DERIVED_ROOM - len(os.fsencode(tag + dot + ext))
    while len(os.fsencode(stem)) > budget:
        stem = stem[:-1]
    return stem + tag + dot + ext


def exists(folder: int, name: str) -> bool:
    """Whether `name` is taken in the folder open as `folder` (a symlink counts; it is not followed)."""
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def unique_name(folder: int, name: str, also: tuple[str, ...] = (), hidden: tuple[str, ...] = ()) -> str:
    """`name`, or `stem-1.ext`, `stem-2.ext`... so that nothing is overwritten: neither the name
    nor `<name><also>` nor `.<name><hidden>` may exist in the folder open as `folder`."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    candidate, n = name, 0
    while (exists(folder, candidate) or any(exists(folder, candidate + s) for s in also)
           or any(exists(folder, f".{candidate}{s}") for s in hidden)):
        n += 1
        candidate = f"{stem}-{n}{dot}{ext}"
    return candidate


def pending_name(final: str, ok: bool) -> str:
    return f".{final}{PENDING_SUFFIX[ok]}"


def parse_pending(pending: str) -> tuple[str, bool] | None:
    """(final audio name, ok) of a pending record's name; None for a name we did not make."""
    for ok, suffix in PENDING_SUFFIX.items():
        if pending.startswith(".") and pending.endswith(suffix) and len(pending) > len(suffix) + 1:
            return pending[1:-len(suffix)], ok
    return None


def job_id_name(audio: str) -> str:
    return f".{audio}{JOB_ID}"


def read_job_id(folder: int, audio: str) -> str | None:
    """The job id kept beside a claimed file: the text of a symlink that is never followed (see
    Inbox.keep_job_id), or the content of a regular file (earlier versions; never through a link)."""
    name = job_id_name(audio)
    try:
        return os.readlink(name, dir_fd=folder).strip() or None
    except OSError as exc:
        if exc.errno != errno.EINVAL:   # EINVAL: not a symlink, an earlier version's file
            return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 200).decode("ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
