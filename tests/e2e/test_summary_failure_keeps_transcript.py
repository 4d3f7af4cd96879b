"""A failed or hung summary never costs the transcript (issue 15, item 2).

End to end: the agent as a subprocess, a real Mosquitto, and an OpenAI-compatible summarizer
served by `tests.support.http_stub` that fails at once, fails with retries that would outlast
`summarizer.timeout_s`, or hangs. In every case the transcript is published before the summary
step ends, the summary comes from the extractive fallback and says so, the `engine` alert is
raised, the job is done and the file is in processed/, all within `summarizer.timeout_s`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support.http_stub import HTTPStub, Reply, json_reply
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav

TIMEOUT_S = 3.0
#: What the agent may add beyond summarizer.timeout_s (an event through the outbox and MQTT).
SLACK_S = 1.5
CHAT = "/v1/chat/completions"

FAILURES = {
    # HTTP 400: not retried, engine_error at once.
    "error": (lambda request: Reply(400, b'{"error": "bad model"}', {"Content-Type": "application/json"}),
              "engine_error"),
    # 503 with Retry-After, max_retries 20: the engine alone would retry for ~40 s.
    "retries": (lambda request: Reply(503, b"overloaded", {"Retry-After": "2"}), "engine_timeout"),
    # Accepts the request and answers after a minute (the engine's own timeout is 60 s).
    "hangs": (lambda request: Reply(200, b"{}", {"Content-Type": "application/json"}, delay_s=60),
              "engine_timeout"),
}


def drop(inbox: Path, name: str) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(tone_wav(0.4))
    os.rename(tmp, inbox / name)


@pytest.fixture
def stub():
    with HTTPStub() as server:
        yield server


def summarizer_config(url: str) -> dict:
    return {"summarizer": {"engine": "openai", "min_words": 0, "timeout_s": TIMEOUT_S,
                           "openai": {"base_url": url + "/v1", "model": "test", "timeout_s": 60, "max_retries": 20}}}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failed_summary_still_publishes_the_transcript_with_a_fallback_summary(failure, stub, make_agent, probe):
    handler, code = FAILURES[failure]
    stub.route("POST", CHAT, handler)
    agent = make_agent(summarizer_config(stub.url), env={"OPENAI_API_KEY": "sk-test-reliability"}).start(probe)
    drop(agent.inbox, "a.wav")
    transcript = probe.wait_for(f"{agent.root}/event/transcript", timeout=15, what="the transcript")[0].json
    t_transcript = time.monotonic()
    summary = probe.wait_for(f"{agent.root}/event/summary", timeout=TIMEOUT_S + 15, what="the summary")[0].json
    t_summary = time.monotonic()

    assert transcript["text"].startswith("audio 0.40 s")
    assert summary["job_id"] == transcript["job_id"]
    assert summary["fallback"] is True and summary["engine"] == "extractive"
    assert summary["fallback_from"] == "openai" and summary["error"]["code"] == code, summary
    assert summary["text"] == transcript["text"]   # the extractive summary of a one-sentence text
    assert summary["timings_ms"]["summarize"] <= (TIMEOUT_S + 0.5) * 1000, summary["timings_ms"]
    assert t_summary - t_transcript <= TIMEOUT_S + SLACK_S
    if code == "engine_timeout":
        # The transcript went out while the summarizer was still being waited for.
        assert t_summary - t_transcript >= TIMEOUT_S - 1.0, (t_transcript, t_summary)
    assert stub.requests_to(CHAT), "the configured summarizer was tried first"

    alert = probe.wait_for(f"{agent.root}/alert/engine", lambda m: bool(m.payload), timeout=10,
                           what="the engine alert")[-1].json
    assert alert["level"] == "warning"
    assert alert["summary_fallback"]["engine"] == "openai"
    assert alert["summary_fallback"]["error"]["code"] == code

    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "done", timeout=10, what="job done")
    record_path = agent.inbox / "processed" / "a.wav.json"
    wait_until(record_path.exists, 10, "the file in processed/")
    record = json.loads(record_path.read_text())
    assert record["transcript"] == transcript["text"] and record["summary"] == summary["text"]
    assert record["summary_fallback"]["error"]["code"] == code
    assert not list((agent.inbox / "failed").glob("*")), "a summary failure must not fail the job"


def test_engine_alert_clears_when_the_summarizer_answers_again(stub, make_agent, probe):
    stub.route("POST", CHAT, FAILURES["error"][0])
    agent = make_agent(summarizer_config(stub.url), env={"OPENAI_API_KEY": "sk-test-reliability"}).start(probe)
    drop(agent.inbox, "a.wav")
    probe.wait_for(f"{agent.root}/alert/engine", lambda m: bool(m.payload), timeout=15, what="the engine alert")
    stub.route("POST", CHAT, lambda request: json_reply(
        {"id": "c", "object": "chat.completion", "model": "test",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Fine."}}]}))
    drop(agent.inbox, "b.wav")
    summary = probe.wait_for(f"{agent.root}/event/summary", lambda m: m.json["source"]["name"] == "b.wav",
                             timeout=15, what="the second summary")[0].json
    assert summary["engine"] == "openai" and summary["text"] == "Fine." and "fallback" not in summary
    probe.wait_for(f"{agent.root}/alert/engine", lambda m: m.payload == b"", timeout=10, what="alert cleared")
