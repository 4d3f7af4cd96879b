"""Recordings of real people with their reference transcripts, fetched from package registries.

Why: espeak-ng is clean, steady and always the same voice, so an engine trick (joining clips,
trimming the encoder window, greedy decoding) can look free on it and still cost words on people.
The issue that asked for this (#16) found exactly that. Nothing here is committed: the set-up
fetches, once, into the gitignored `.cache/real-speech/`:

- PyPI's `pocketsphinx` 5.1.1 source distribution (`pip download`), whose test data holds
  recordings with transcripts in the package itself: five LibriVox readers' sentences
  (`librivox/transcription`), five card-game commands (`cards/cards.transcription`), "go forward
  ten meters" (`goforward.raw`, the sentence its own alignment test aligns), a TIDIGITS speaker
  reading "two nine three four zero" at 8 kHz (`tidigits/dhd.2934z.raw`: TIDIGITS names a file by
  its digits, z = zero) and a sung line (`forever/input_2_16k.wav`, the text its alignment test
  aligns) — all 16 kHz except the digits.
- Debian's `alsa-utils`, whose `/usr/share/sounds/alsa/` holds a person saying each speaker
  position ("Front Center", ...) at 48 kHz, and a noise sample with no speech. Taken from the
  installed package (scripts/setup-system --test installs it) or, failing that, from
  `apt-get download alsa-utils`.

Raw files are wrapped as WAV with the stdlib, nothing else is changed: the agent gets the
recordings at their own rates. Everything is pinned (version and sha256) so the transcripts
stay exact; any step that fails makes `recordings()` return fewer items and `unavailable()` say
why, so tests skip with that reason instead of failing.
"""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / ".cache" / "real-speech"

PS_VERSION = "5.1.1"
PS_SDIST = f"pocketsphinx-{PS_VERSION}.tar.gz"
PS_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
_PS_DATA = f"pocketsphinx-{PS_VERSION}/test/data/"

ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
ALSA_NAMES = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
              "Side_Left", "Side_Right")

_problems: list[str] = []


@dataclass(frozen=True)
class Recording:
    """One recording of a real person and what they said (lower case, no punctuation)."""

    path: Path
    text: str
    source: str
    kind: str        # "command", "sentence", "digits" or "sung"

    @property
    def name(self) -> str:
        return self.path.name


def unavailable() -> str:
    """Why some or all recordings are missing (empty when everything was fetched)."""
    recordings()
    return "; ".join(_problems)


# -- pocketsphinx source distribution ---------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pocketsphinx_sdist() -> Path | None:
    """The pinned sdist in the cache, downloaded with pip once (no build, no dependencies)."""
    folder = CACHE / "pip"
    sdist = folder / PS_SDIST
    if not sdist.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", "pocketsphinx", f"pocketsphinx=={PS_VERSION}", "-d", str(folder)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            _problems.append(f"pip download pocketsphinx=={PS_VERSION} failed: {exc} "
                             f"{detail.decode(errors='replace')[-300:]}")
            return None
    if not sdist.is_file():
        _problems.append(f"pip download did not leave {sdist}")
        return None
    if _sha256(sdist) != PS_SHA256:
        _problems.append(f"{sdist} does not have the pinned sha256 {PS_SHA256}")
        return None
    return sdist


def _raw_to_wav(raw: bytes, rate: int, path: Path) -> None:
    """Headerless 16-bit little-endian mono PCM (pocketsphinx's .raw) wrapped as a WAV."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(raw)


def _transcripts(text: str) -> dict[str, str]:
    """Sphinx transcription lines `<s> words </s> (id)` as {id: words}."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if match:
            found[match.group(2)] = " ".join(match.group(1).split())
    return found


def _extract_pocketsphinx(sdist: Path, target: Path) -> list[Recording]:
    """The recordings and their transcripts out of the sdist, by exact member name only."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        def read(member: str) -> bytes:
            handle = tar.extractfile(_PS_DATA + member)
            if handle is None:
                raise KeyError(member)
            return handle.read()

        out: list[Recording] = []
        librivox = _transcripts(read("librivox/transcription").decode())
        for utt_id, text in sorted(librivox.items()):
            path = target / f"{utt_id}.wav"
            path.write_bytes(read(f"librivox/{utt_id}.wav"))
            out.append(Recording(path, text, "pocketsphinx sdist: LibriVox", "sentence"))
        cards = _transcripts(read("cards/cards.transcription").decode())
        for utt_id, text in sorted(cards.items()):
            path = target / f"cards-{utt_id}.wav"
            path.write_bytes(read(f"cards/{utt_id}.wav"))
            out.append(Recording(path, text, "pocketsphinx sdist: cards", "command"))
        path = target / "goforward.wav"
        _raw_to_wav(read("goforward.raw"), 16000, path)
        out.append(Recording(path, "go forward ten meters", "pocketsphinx sdist: goforward", "command"))
        path = target / "tidigits-dhd-2934z-8k.wav"
        _raw_to_wav(read("tidigits/dhd.2934z.raw"), 8000, path)
        out.append(Recording(path, "two nine three four zero", "pocketsphinx sdist: TIDIGITS", "digits"))
        path = target / "forever-input_2_16k.wav"
        path.write_bytes(read("forever/input_2_16k.wav"))
        out.append(Recording(path, "feels like these days go on forever", "pocketsphinx sdist: forever", "sung"))
    return out


@functools.lru_cache(maxsize=1)
def _pocketsphinx_recordings() -> tuple[Recording, ...]:
    """Unpacked once into the cache under a temporary name and renamed when whole, so an
    interrupted set-up never leaves a half folder that a later run would trust."""
    target = CACHE / f"pocketsphinx-{PS_VERSION}"
    index = target / "index.tsv"
    if not index.is_file():
        sdist = _pocketsphinx_sdist()
        if sdist is None:
            return ()
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=CACHE))
        try:
            found = _extract_pocketsphinx(sdist, staging)
            (staging / "index.tsv").write_text(
                "".join(f"{r.path.name}\t{r.text}\t{r.source}\t{r.kind}\n" for r in found))
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except (OSError, KeyError, tarfile.TarError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            _problems.append(f"cannot unpack {sdist.name}: {exc!r}")
            return ()
    out = []
    for line in index.read_text().splitlines():
        name, text, source, kind = line.split("\t")
        out.append(Recording(target / name, text, source, kind))
    return tuple(out)


# -- alsa-utils --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _alsa_folder() -> Path | None:
    """Debian alsa-utils' sound folder: the installed one, else one unpacked from `apt-get download`."""
    if all((ALSA_SOUNDS / f"{n}.wav").is_file() for n in ALSA_NAMES):
        return ALSA_SOUNDS
    unpacked = CACHE / "alsa-utils" / "root" / ALSA_SOUNDS.relative_to("/")
    if all((unpacked / f"{n}.wav").is_file() for n in ALSA_NAMES):
        return unpacked
    folder = CACHE / "alsa-utils"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", "alsa-utils"], cwd=folder, check=True, capture_output=True,
                       timeout=300)
        debs = sorted(folder.glob("alsa-utils_*.deb"))
        if not debs:
            raise FileNotFoundError("apt-get download left no alsa-utils_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(folder / "root")], check=True,
                       capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        _problems.append(f"alsa-utils sounds not installed and apt-get download failed: {exc}")
        return None
    return unpacked if (unpacked / "Front_Center.wav").is_file() else None


@functools.lru_cache(maxsize=1)
def _alsa_recordings() -> tuple[Recording, ...]:
    folder = _alsa_folder()
    if folder is None:
        return ()
    return tuple(Recording(folder / f"{n}.wav", n.replace("_", " ").lower(), "Debian alsa-utils", "command")
                 for n in ALSA_NAMES)


def noise_wav() -> Path | None:
    """alsa-utils' Noise.wav (48 kHz, no speech): an engine must give no words for it."""
    folder = _alsa_folder()
    path = folder / "Noise.wav" if folder else None
    return path if path is not None and path.is_file() else None


# -- all ---------------------------------------------------------------------------------------


def recordings(kinds: tuple[str, ...] = ("command", "sentence", "digits")) -> list[Recording]:
    """Every fetched recording of the given kinds (the sung line is left out unless asked for:
    it is music, not the speech the agent is for)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = [*_pocketsphinx_recordings(), *_alsa_recordings()]
    return [r for r in found if r.kind in kinds]


def require(minimum: int = 10, kinds: tuple[str, ...] = ("command", "sentence", "digits")) -> list[Recording]:
    """The recordings, or a pytest skip saying why there are fewer than `minimum`."""
    found = recordings(kinds)
    if len(found) < minimum:
        import pytest
        pytest.skip(f"only {len(found)} real-speech recordings available (need {minimum}): {unavailable()}")
    return found


# -- word error rate ---------------------------------------------------------------------------

_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUMBERS["oh"] = "0"
_SPELLING = {"mr": "mister", "centre": "center", "metres": "meters", "metre": "meter", "ok": "okay"}


def normalize(text: str) -> list[str]:
    """Words to compare: lower case, no punctuation, hyphens split, a few spellings unified, and
    numbers as digits with a number of three or more digits spoken digit by digit ("2934" and
    "two nine three four" match; "10" and "ten" match).

    Why this much and no more: whisper writes "Go forward 10 meters." and "Mr. Dashwood" for what
    the references spell out; anything beyond spelling is an error the measure must see.
    """
    words: list[str] = []
    for token in re.split(r"[\s\-\u2010-\u2015/]+", text.lower()):
        token = re.sub(r"[^\w']+", "", token).strip("'")
        if not token:
            continue
        token = _SPELLING.get(token, token)
        token = _NUMBERS.get(token, token)
        if token.isdigit() and len(token) >= 3:
            words.extend(token)
        else:
            words.append(token)
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def wer(pairs: list[tuple[str, str]]) -> float:
    """Corpus word error rate of (reference, hypothesis) pairs: all edits over all reference words."""
    edits = sum(edit_distance(normalize(ref), normalize(hyp)) for ref, hyp in pairs)
    total = sum(len(normalize(ref)) for ref, _ in pairs)
    return edits / total if total else 0.0


def word_recall(reference: str, hypothesis: str) -> float:
    """Share of the reference's words found in the hypothesis (order-free, normalized)."""
    ref = normalize(reference)
    hyp = normalize(hypothesis)
    return sum(1 for w in ref if w in hyp) / len(ref) if ref else 1.0
