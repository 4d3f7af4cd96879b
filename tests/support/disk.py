"""A small tmpfs to fill, for tests of a full disk (root only: mounting needs it)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_tmpfs(folder: Path, size: str = "2m") -> Iterator[Path]:
    """`folder` (created) with a tmpfs of `size` mounted on it for the duration; skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, name: str = "filler.bin") -> Path:
    """Fill the filesystem of `folder` to the last byte; returns the file to unlink for space."""
    filler = folder / name
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler
