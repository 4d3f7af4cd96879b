"""Fake /etc/machine-id files, so two agents on one host look like two Pis flashed from one image."""

from __future__ import annotations

from pathlib import Path

MACHINE_A = "0123456789abcdef0123456789abcdef"
MACHINE_B = "fedcba9876543210fedcba9876543210"


def machine_id_file(folder: Path, value: str) -> Path:
    """Write `value` as a machine-id file in `folder` (created if needed) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "machine-id"
    path.write_text(value + "\n")
    return path
