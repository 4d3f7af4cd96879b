"""Inbox helpers for end-to-end tests: deliver a file the way a careful writer does, wait for and read
the records the agent writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def drop(inbox: Path, name: str, data: bytes) -> None:
    """How a careful writer delivers: write a hidden temp file, then rename into place."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, inbox / name)


def records(folder: Path, suffix: str = ".json") -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in folder.glob(f"*{suffix}")} if folder.exists() else {}


def wait_files(folder: Path, pattern: str, count: int, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(folder.glob(pattern)) if folder.exists() else []
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)}/{count} {pattern} in {folder} after {timeout}s"
        time.sleep(0.1)


def words_found(text: str, sentence: str) -> float:
    words = sentence.split()
    got = text.lower()
    return sum(w in got for w in words) / len(words)
