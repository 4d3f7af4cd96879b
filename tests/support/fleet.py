"""Fleet helpers for end-to-end tests: the shared jobs topic, the MQTT 5 reason code for a publish no
worker takes, and a worker agent's config.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.whisper_cpp_standin import whisper_cpp_standin


JOBS_TOPIC = "voice/jobs/transcribe"
NO_MATCHING_SUBSCRIBERS = 16


def worker_config(tmp_path: Path, **fleet) -> dict:
    exe, model = whisper_cpp_standin(tmp_path / "standin")
    return {"fleet": {"worker": True, **fleet},
            "jobs": {"retry_after_s": 0.2},
            "inbox": {"enabled": False},
            "summarizer": {"engine": "none"},
            "transcriber": {"engine": "whisper_cpp",
                            "whisper_cpp": {"binary": str(exe), "model": str(model), "threads": 1}}}
