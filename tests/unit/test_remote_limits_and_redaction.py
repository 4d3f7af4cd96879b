"""agent.config.remote_limits (machine rules, with the machine given) and agent.config.redact."""

from __future__ import annotations

import dataclasses

from agent.config import parse_settings
from agent.config.redact import redact_list, redact_text
from agent.config.remote_limits import remote_problems


def settings(**sections):
    return parse_settings(sections, environ={"VOICE_AGENT_TEST_ENGINES": "1"})


def paths(problems) -> list[str]:
    return [p.path for p in problems]


def test_threads_times_transcriptions_at_once_stay_within_the_cores() -> None:
    s = settings(transcriber={"engine": "whisper_cpp", "whisper_cpp": {"threads": 2}, "concurrency": 2},
                 jobs={"max_concurrent": 2})
    unsafe, _ = remote_problems({"jobs": {"max_concurrent": 2}}, s, cores=4, memory_mb=512)
    assert unsafe == []
    unsafe, _ = remote_problems({"jobs": {"max_concurrent": 2}}, s, cores=2, memory_mb=512)
    assert paths(unsafe) == ["transcriber"] and "2 engine threads x 2 transcriptions" in unsafe[0].message
    # A change that touches none of these keys is not held back by what the local file chose.
    unsafe, _ = remote_problems({"vad": {"silence_ms": 700}}, s, cores=2, memory_mb=512)
    assert unsafe == []


def test_min_available_is_at_most_a_quarter_of_the_memory() -> None:
    s = settings(memory={"min_available_mb": 129})
    assert paths(remote_problems({"memory": {"min_available_mb": 129}}, s, cores=4, memory_mb=512)[0]) == [
        "memory.min_available_mb"]
    s = dataclasses.replace(s, memory=dataclasses.replace(s.memory, min_available_mb=128))
    assert remote_problems({"memory": {"min_available_mb": 128}}, s, cores=4, memory_mb=512)[0] == []


def test_off_device_engines_need_the_opt_in_and_loopback_does_not_count() -> None:
    change = {"summarizer": {"engine": "openai"}}
    _, off = remote_problems(change, settings(summarizer={"engine": "openai"}), cores=4, memory_mb=512)
    assert paths(off) == ["summarizer.engine"]
    local = settings(summarizer={"engine": "openai", "openai": {"base_url": "http://127.0.0.1:11434/v1"}})
    assert remote_problems(change, local, cores=4, memory_mb=512)[1] == []
    opted = settings(summarizer={"engine": "openai"}, mqtt={"remote_off_device_engines": True})
    assert remote_problems(change, opted, cores=4, memory_mb=512)[1] == []


def test_credentials_in_free_text_are_redacted() -> None:
    assert redact_text("https://user:pa55@host.example:8443/v1") == "https://***@host.example:8443/v1"
    assert redact_text("--api-key=sk-proj-abcdefghijklmnop1234") == "--api-key=***"
    assert redact_text("token: abc") == "token:***"
    assert redact_text("use hf_ABCDEFGHIJKLMNOPQRSTU here") == "use *** here"
    assert redact_text("Authorization: Bearer abc.def.ghi-123") == "Authorization:***"
    assert redact_list(["server", "--hf-token", "plain", "-m", "{model}", "--password", "x"]) == [
        "server", "--hf-token", "***", "-m", "{model}", "--password", "***"]
    # Ordinary values stay readable.
    for text in ("Summarize the following transcript:\n\n{text}", "/opt/models/disk-image-0123456789abcdef.bin",
                 "https://api.openai.com/v1", "voice", "whisper-1"):
        assert redact_text(text) == text
