"""A long recording through the real agent: `event/progress` while it is transcribed, and the
running job with its elapsed time in `request/state` (issue #18: a 20-minute recording showed
`running`, then nothing for minutes).

The agent runs as a subprocess against a real Mosquitto with a real faster-whisper model (base,
int8, one thread) on ~65 s of espeak sentences with pauses: three of Whisper's 30 s windows, so
the engine's segments come out in at least two bursts seconds apart.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tests.support.agent import AgentProcess
from tests.support.models import REPO_ROOT, faster_whisper_model_dir
from tests.support.broker import Broker
from tests.support.probe import Probe, retained
from tests.support.speech import LONG_SENTENCES, UTTERANCES, silence, utterance

INTERVAL_S = 1.0
SENTENCES = (*LONG_SENTENCES, *UTTERANCES,
             "The library opens at nine and closes at six on weekdays",
             "My sister bought a small red bicycle for the summer holidays",
             "The committee will publish its report at the end of the month")


def long_recording(path: Path, seconds: float = 65.0) -> float:
    """Sentences with 1.5 s pauses, repeated until `seconds`; written as a 16 kHz WAV. Returns its length."""
    parts: list[np.ndarray] = []
    total = 0
    i = 0
    while total < seconds * 16000:
        for piece in (utterance(SENTENCES[i % len(SENTENCES)]), silence(1.5)):
            parts.append(piece)
            total += len(piece)
        i += 1
    samples = np.concatenate(parts).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    return len(samples) / 16000


@pytest.fixture(scope="module")
def faster_whisper_model() -> Path:
    pytest.importorskip("faster_whisper")
    try:
        return faster_whisper_model_dir(REPO_ROOT / ".cache/models/faster-whisper-base")
    except FileNotFoundError as exc:
        pytest.skip(f"faster-whisper base model cannot be assembled: {exc}")


@pytest.mark.slow
def test_long_job_publishes_rate_limited_progress_and_state_shows_it(
        make_agent, broker: Broker, probe: Probe, tmp_path: Path, faster_whisper_model: Path) -> None:
    agent: AgentProcess = make_agent({
        "transcriber": {"engine": "faster_whisper", "language": "en", "timeout_s": 600,
                        "faster_whisper": {"model": str(faster_whisper_model), "threads": 1,
                                           "compute_type": "int8", "beam_size": 1}},
        "jobs": {"progress_interval_s": INTERVAL_S, "timeout_s": 600},
        "inbox": {"max_duration_s": 600},
    }).start(probe)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"],
                   timeout=120, what="faster-whisper loaded")
    recording = tmp_path / "long.wav"
    audio_s = long_recording(recording)
    (agent.inbox / "meeting.wav").write_bytes(recording.read_bytes())

    running = probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running",
                             timeout=30, what="the job running")[0].json
    job_id = running["job_id"]
    first = probe.wait_for(f"{agent.root}/event/progress", timeout=120, what="a first progress event")[0].json

    # while it runs, `state` lists the job with its elapsed time
    answer = probe.request(agent.root, "state", timeout=30)
    assert answer["status"] == "ok", answer
    [active] = [j for j in answer["data"]["jobs"]["active"] if j["job_id"] == job_id]
    assert active["source"]["kind"] == "inbox" and active["source"]["name"] == "meeting.wav"
    assert active["elapsed_s"] > 0 and active["started_at"].endswith("Z")
    assert active["fraction"] is not None and 0 < active["fraction"] <= 1

    done = probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["job_id"] == job_id
                          and m.json["state"] in ("done", "failed"), timeout=300, what="the job's end")[0].json
    assert done["state"] == "done", done
    transcript = probe.wait_for(f"{agent.root}/event/transcript", lambda m: m.json["job_id"] == job_id,
                                what="the transcript")[0].json["text"]
    events = [m.json for m in probe.on(f"{agent.root}/event/progress") if m.json["job_id"] == job_id]
    assert events[0] == first and len(events) >= 2, events

    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and len(set(fractions)) >= 2, fractions
    assert all(0 < f <= 1 for f in fractions)
    for event in events:   # the text so far is the start of the final transcript
        assert not event["text_truncated"] and transcript.startswith(event["text"]), (event, transcript)
    assert len(events[-1]["text"]) > len(events[0]["text"])
    # the rate limit: at most one event per interval over the job's run (count vs duration)
    elapsed = [e["elapsed_s"] for e in events]
    assert elapsed == sorted(elapsed)
    assert all(round(b - a, 1) >= INTERVAL_S for a, b in zip(elapsed, elapsed[1:])), elapsed
    assert len(events) <= elapsed[-1] / INTERVAL_S + 1
    print(f"{len(events)} progress events for {audio_s:.0f} s of audio, fractions {fractions}, at {elapsed} s")
    assert audio_s > 60
    # ephemeral: nothing is left for a late subscriber, and the state forgets the finished job
    assert retained(broker.host, broker.port, f"{agent.root}/event/progress", timeout=1.0) is None
    final = probe.request(agent.root, "state")["data"]["jobs"]["active"]
    assert all(j["job_id"] != job_id for j in final)
