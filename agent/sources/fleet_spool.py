"""The shared jobs a device holds, one file each under `<state_dir>/fleet/`: the fleet's queue.

A job is written (and fsynced, with its folder) before anything else happens to it, so once the
device has it, a crash or a stop does not lose it: the next start finds it again, like a file in
the inbox. Names carry the state, so a restart knows what each file was doing:

    <seq>.job    waiting for a slot here (or for its turn to go back to the group)
    <seq>.run1   running; found at start: run once more (a crash or power cut stopped it)
    <seq>.run2   running the second time; found at start: answered `internal`, not run a third
                 time (the job itself may be what kills the device)

Each file is one JSON header line (`job_id`, the MQTT 5 Response Topic and Correlation Data)
and the job's payload exactly as it arrived. Only this small index stays in memory, never the
audio. Costs per job: one write and two fsyncs to hold it, a rename to start it, an unlink
at the end.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.durable import fsync_dir

log = logging.getLogger(__name__)


@dataclass
class Held:
    seq: int
    job_id: str
    path: Path
    hold_until: float = 0.0      # monotonic; not sent back to the group before this
    attempt: int = 0             # runs started: 1 or 2 found at start means interrupted
    running: bool = False


class FleetSpool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._held: dict[int, Held] = {}
        folder.mkdir(parents=True, exist_ok=True)
        self._seq = 0
        for path in sorted(folder.iterdir()):
            stem, _, kind = path.name.partition(".")
            if not stem.isdigit() or kind not in ("job", "run1", "run2"):
                if kind == "tmp":
                    path.unlink(missing_ok=True)
                continue
            seq = int(stem)
            self._seq = max(self._seq, seq)
            try:
                job_id = json.loads(path.open("rb").readline())["job_id"]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("fleet: unreadable spool file %s removed", path.name)
                path.unlink(missing_ok=True)
                continue
            self._held[seq] = Held(seq, str(job_id), path, attempt={"job": 0, "run1": 1, "run2": 2}[kind])

    # --- the index -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, job_id: str) -> Held | None:
        with self._lock:
            return next((h for h in self._held.values() if h.job_id == job_id), None)

    def waiting(self) -> list[Held]:
        """Not running here now, oldest first (jobs interrupted by the last stop come first)."""
        with self._lock:
            return sorted((h for h in self._held.values() if not h.running), key=lambda h: (h.attempt == 0, h.seq))

    def detach(self, held: Held) -> None:
        """Out of the index (being sent back to the group); the file stays until `drop`."""
        with self._lock:
            self._held.pop(held.seq, None)

    def attach(self, held: Held) -> None:
        with self._lock:
            self._held[held.seq] = held

    # --- files ---------------------------------------------------------------------------

    def add(self, job_id: str, payload: bytes, response_topic: str | None, correlation: bytes | None,
            hold_until: float) -> Held:
        header = json.dumps({"job_id": job_id, "response_topic": response_topic,
                             "correlation": correlation.hex() if correlation is not None else None})
        with self._lock:
            self._seq += 1
            seq = self._seq
        path = self.folder / f"{seq:012d}.job"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(header.encode("utf-8") + b"\n")
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(self.folder)
        held = Held(seq, job_id, path, hold_until)
        self.attach(held)
        return held

    def read(self, held: Held) -> tuple[bytes, str | None, bytes | None]:
        with open(held.path, "rb") as fh:
            header = json.loads(fh.readline())
            payload = fh.read()
        corr = header.get("correlation")
        return payload, header.get("response_topic"), bytes.fromhex(corr) if corr else None

    def start(self, held: Held) -> None:
        """Mark it running: `.run1`, or `.run2` when a stop interrupted it once already."""
        new = held.path.with_suffix(f".run{min(held.attempt + 1, 2)}")
        os.replace(held.path, new)
        with self._lock:
            held.path, held.attempt, held.running = new, held.attempt + 1, True

    def drop(self, held: Held) -> None:
        """Done with it (answered, or handed back to the group)."""
        self.detach(held)
        try:
            held.path.unlink()
        except FileNotFoundError:
            pass
