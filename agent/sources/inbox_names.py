"""Names in the inbox's folders: what a claimed or finished file is called, and the small files
beside it (pending record, job id). Pure path logic, read-only: every write of a finish stays in
agent.sources.inbox, where the crash tests inject their failures step by step."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


def unique_path(folder: Path, name: str, also: tuple[str, ...] = (), hidden: tuple[str, ...] = ()) -> Path:
    """`name`, or `stem-1.ext`, `stem-2.ext`... so that nothing is overwritten: neither the name
    nor `<name><also>` nor `.<name><hidden>` may exist."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    candidate, n = name, 0
    while (os.path.lexists(folder / candidate) or any(os.path.lexists(folder / (candidate + s)) for s in also)
           or any(os.path.lexists(folder / f".{candidate}{s}") for s in hidden)):
        n += 1
        candidate = f"{stem}-{n}{dot}{ext}"
    return folder / candidate


def pending_path(final: Path, ok: bool) -> Path:
    return final.with_name(f".{final.name}{PENDING_SUFFIX[ok]}")


def parse_pending(pending: Path) -> tuple[Path, bool] | None:
    """(final audio path, ok) of a pending record's name; None for a name we did not make."""
    for ok, suffix in PENDING_SUFFIX.items():
        if pending.name.endswith(suffix) and len(pending.name) > len(suffix) + 1:
            return pending.with_name(pending.name[1:-len(suffix)]), ok
    return None


def job_id_path(audio: Path) -> Path:
    return audio.with_name(f".{audio.name}{JOB_ID}")


def read_job_id(audio: Path) -> str | None:
    try:
        return job_id_path(audio).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
