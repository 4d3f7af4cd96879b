"""Commands hold their own logic and work on the `Services` record, not on the running App.

Unit tests: each handler gets a Services of fakes (no broker, no agent process), which is only
possible because handlers/ no longer reach through `App`. The end-to-end behaviour of the same
commands is covered in tests/e2e/ (test_request_answers.py, test_live_config.py,
test_command_allow_list.py, test_remote_config.py, test_listen.py).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.errors import RequestError
from agent.jobs.results import answer_fields
from agent.settings import DEVICE, Settings
from handlers import config, control, jobs
from agent.sources.inbox import Inbox
from agent.sources.inbox_feed import InboxFeed
from handlers.base import Request, Services


def services(**given: Any) -> Services:
    """A Services whose every part is absent (None) unless given: a handler touching a part it
    should not need fails loudly."""
    values: dict[str, Any] = {f.name: None for f in dataclasses.fields(Services)}
    values["store"] = SimpleNamespace(settings=Settings())
    values.update(given)
    return Services(**values)


def request(command: str, body: dict[str, Any], sv: Services) -> Request:
    return Request(command, body, None, sv, job_id="job-1", scope=DEVICE)


def test_services_is_frozen() -> None:
    sv = services()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sv.run = None  # type: ignore[misc]


class FakeMicrophone:
    """Capturing while the last pause call was False (as the listening part answers)."""

    def __init__(self, calls: list[bool]) -> None:
        self.calls = calls
        self.present = True

    @property
    def on(self) -> bool:
        return not self.calls[-1]


def test_pause_and_resume_act_through_the_narrow_callable() -> None:
    calls: list[bool] = []
    sv = services(set_paused=calls.append, microphone=FakeMicrophone(calls))
    assert control.pause(request("pause", {}, sv)) == {"paused": True, "listening": False}
    assert control.resume(request("resume", {}, sv)) == {"paused": False, "listening": True}
    assert calls == [True, False]


def test_listening_without_a_microphone_is_refused_and_changes_nothing() -> None:
    calls: list[bool] = []
    sv = services(microphone=SimpleNamespace(present=False), set_listening=calls.append)
    with pytest.raises(RequestError) as exc:
        control.listening(request("listening", {"listening": False}, sv))
    assert exc.value.code == "bad_request" and calls == []


def test_config_set_is_refused_when_remote_config_is_off() -> None:
    off = Settings()
    off = dataclasses.replace(off, mqtt=dataclasses.replace(off.mqtt, remote_config=False))
    sv = services(store=SimpleNamespace(settings=off))   # refused before the overlay is touched
    with pytest.raises(RequestError) as exc:
        config.set_(request("config/set", {"config": {"log_level": "DEBUG"}}, sv))
    assert exc.value.code == "forbidden"


@pytest.mark.parametrize("name,code", [
    ("../outside.wav", "forbidden"), (".hidden.wav", "forbidden"), ("half.wav.part", "forbidden"),
    ("link.wav", "forbidden"), ("pipe.wav", "forbidden"), ("missing.wav", "not_found"), ("x" * 5000, "forbidden"),
    ("taken.wav", "not_found"),
])
def test_a_named_file_is_claimed_only_when_a_regular_file_waits_in_the_inbox(tmp_path: Path, monkeypatch,
                                                                            name: str, code: str) -> None:
    """The inbox source's check of a `transcribe` request's `file` (Inbox.claim_named)."""
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"canary")
    box = Inbox(dataclasses.replace(Settings().inbox, path=str(tmp_path / "inbox")), lambda: None)
    box.start()
    box.stop()
    (box.path / "taken.wav").write_bytes(b"RIFF")
    os.symlink(outside, box.path / "link.wav")
    os.mkfifo(box.path / "pipe.wav")
    claims: list[str] = []
    monkeypatch.setattr(box, "claim", lambda n: claims.append(n))   # taken by another job meanwhile
    with pytest.raises(RequestError) as exc:
        box.claim_named(name)
    box.close()
    assert exc.value.code == code
    assert claims == (["taken.wav"] if name == "taken.wav" else [])
    assert outside.read_bytes() == b"canary"


def test_transcribe_without_an_inbox_and_bad_base64_are_bad_requests() -> None:
    sv = services(inbox=InboxFeed(Settings().inbox, make=lambda settings, kind: None))
    for body in ({"file": "a.wav"}, {"audio_b64": "%%%"}, {}, {"file": "a.wav", "audio_b64": "AAAA"}):
        with pytest.raises(RequestError) as exc:
            jobs.transcribe(request("transcribe", body, sv))
        assert exc.value.code == "bad_request", body


def test_a_request_answer_and_a_fleet_result_carry_the_same_fields_in_one_order() -> None:
    record = {"job_id": "j", "transcript": "hello", "language": "en", "audio_s": 1.5, "summary": None,
              "engines": {"transcriber": "t"}, "timings_ms": {"total": 3.0}, "source": {"kind": "request"}}
    assert list(answer_fields(record)) == ["text", "language", "audio_s", "summary", "engines", "timings_ms"]
    assert list(jobs._answer(record)) == ["job_id", *answer_fields(record)]
