"""The inbox announces a complete file (the `queued` event, stored in SQLite) with no lock held."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.settings import InboxSettings
from agent.sources.inbox import Inbox


def test_a_file_is_announced_outside_the_lock_and_takeable_only_after(tmp_path: Path) -> None:
    release = threading.Event()
    took_during_announce: list[str | None] = []
    ready = threading.Event()

    def announce(name: str) -> None:
        # Another thread asks the inbox (which takes its lock) while the announcement is under way:
        # it must get an answer at once, and the file must not be takeable yet.
        asker = threading.Thread(target=lambda: took_during_announce.append(box.take_ready()))
        asker.start()
        asker.join(timeout=5)
        assert not asker.is_alive(), "the announcement ran under the inbox's lock"
        release.set()

    box = Inbox(InboxSettings(path=str(tmp_path / "inbox"), settle_ms=50), ready.set, announce=announce)
    box.start()
    try:
        (box.path / "a.wav").write_bytes(b"RIFF")
        assert ready.wait(5) and release.is_set()
        assert took_during_announce == [None]
        assert box.take_ready() == "a.wav"
    finally:
        box.stop()
        box.close()
