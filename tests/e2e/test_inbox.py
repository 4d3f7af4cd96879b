"""Inbox and engines: drop a file, get its transcript and summary; nothing lost or done twice."""

from __future__ import annotations

import base64
import json
import os
import random
import time

import pytest

from tests.support.models import faster_whisper_model_dir, real_whisper_cpp, speech_wav
from tests.support.paths import REPO
from tests.support.probe import retained
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav
from tests.support.inbox import drop, records, wait_files, words_found


SENTENCES = {
    "fox.wav": "the quick brown fox jumps over the lazy dog",
    "weather.wav": "tomorrow the weather will be sunny and warm in the afternoon",
}


def _whisper_cpp() -> dict:
    binary, model = real_whisper_cpp()   # skips in a checkout without ../shared/models
    return {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(binary), "model": str(model), "threads": 2}}


ENGINES = {
    "whisper_cpp": lambda tmp: _whisper_cpp(),
    "faster_whisper": lambda tmp: {"engine": "faster_whisper",
                                   "faster_whisper": {"model": str(faster_whisper_model_dir(
                                       REPO / ".cache/models/faster-whisper-base"))}},
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_speech_in_inbox_becomes_transcript_and_summary(make_agent, probe, tmp_path, engine):
    agent = make_agent({"transcriber": ENGINES[engine](tmp_path), "summarizer": {"min_words": 3}}).start(probe)
    for name, sentence in SENTENCES.items():
        speech_wav(sentence, tmp_path / name)
        drop(agent.inbox, name, (tmp_path / name).read_bytes())
    transcripts = probe.wait_for(f"{agent.root}/event/transcript", count=len(SENTENCES), timeout=180,
                                 what="transcripts")
    for t in transcripts:
        body = t.json
        sentence = SENTENCES[body["source"]["name"]]
        assert words_found(body["text"], sentence) >= 0.7, body["text"]
        assert body["source"]["kind"] == "inbox" and body["engine"] == engine
        assert body["audio_s"] > 1 and body["timings_ms"]["transcribe"] > 0
    summaries = probe.wait_for(f"{agent.root}/event/summary", count=len(SENTENCES), what="summaries")
    assert {s.json["job_id"] for s in summaries} == {t.json["job_id"] for t in transcripts}
    assert all(s.json["text"] and s.json["engine"] == "extractive" for s in summaries)
    wait_files(agent.inbox / "processed", "*.wav.json", len(SENTENCES))
    for name in SENTENCES:
        rec = json.loads((agent.inbox / "processed" / f"{name}.json").read_text())
        assert (agent.inbox / "processed" / name).exists()
        for key in ("job_id", "content_hash", "source", "audio_s", "transcript", "summary", "engines",
                    "timings_ms"):
            assert key in rec, key
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "done", count=len(SENTENCES),
                   what="done events")
    states = [m.json["state"] for m in probe.on(f"{agent.root}/event/job")]
    assert states.count("done") == len(SENTENCES) and "running" in states and "queued" in states


BAD_FILES = {
    "empty.wav": (b"", "empty"),
    "garbage.wav": (bytes(random.Random(1).randrange(256) for _ in range(3000)), "corrupt"),
    "truncated.wav": (tone_wav(1.0)[:30], "corrupt"),
    "lying.wav": (tone_wav(0.5)[:44] + b"\x00" * 10, "corrupt"),   # header claims more data than there is
    "adpcm.wav": (b"RIFF" + (36 + 100).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
                  + bytes.fromhex("1100 0100 401f0000 401f0000 0100 0400") + b"data" + (100).to_bytes(4, "little")
                  + b"\x7f" * 100, "unsupported_format"),   # IMA ADPCM (G.711 mu-law, tag 7, is decoded)
    "long.wav": (tone_wav(3.0), "too_long"),
}


def test_bad_files_fail_with_codes_and_agent_carries_on(make_agent, probe):
    agent = make_agent({"inbox": {"max_duration_s": 2}}).start(probe)
    for name, (data, _) in BAD_FILES.items():
        drop(agent.inbox, name, data)
    drop(agent.inbox, "good.wav", tone_wav(0.5))
    os.symlink("/etc/passwd", agent.inbox / "link.wav")
    os.mkfifo(agent.inbox / "fifo.wav")
    failed = agent.inbox / "failed"
    wait_files(failed, "*.error.json", len(BAD_FILES) + 2)
    errors = records(failed, ".error.json")
    for name, (_, code) in BAD_FILES.items():
        rec = errors[f"{name}.error.json"]
        assert rec["code"] == code, (name, rec)
        assert rec["message"] and "Traceback" not in rec["message"]
        assert (failed / name).exists()   # the audio is kept beside its reason
    assert errors["link.wav.error.json"]["code"] == "forbidden"
    assert (failed / "link.wav").is_symlink()   # the link moved, /etc/passwd untouched
    assert errors["fifo.wav.error.json"]["code"] == "forbidden"   # one code for anything but a plain file
    wait_files(agent.inbox / "processed", "good.wav.json", 1)
    failures = [m.json for m in probe.on(f"{agent.root}/event/job") if m.json["state"] == "failed"]
    assert {f["error"]["code"] for f in failures} >= {"empty", "corrupt", "unsupported_format", "too_long"}
    assert probe.request(agent.root, "ping")["status"] == "ok"


def test_too_large_and_ignored_names(make_agent, probe):
    agent = make_agent({"inbox": {"max_bytes": 4096}}).start(probe)
    drop(agent.inbox, "big.wav", tone_wav(1.0))
    for ignored in (".hidden.wav", "upload.wav.part", "x.tmp", "backup.wav~"):
        (agent.inbox / ignored).write_bytes(tone_wav(0.1))
    (agent.inbox / "folder.wav").mkdir()
    wait_files(agent.inbox / "failed", "big.wav.error.json", 1)
    assert records(agent.inbox / "failed", ".error.json")["big.wav.error.json"]["code"] == "too_large"
    time.sleep(1.0)
    for ignored in (".hidden.wav", "upload.wav.part", "x.tmp", "backup.wav~", "folder.wav"):
        assert (agent.inbox / ignored).exists(), ignored


def test_slow_writer_is_taken_once_complete(make_agent, probe):
    agent = make_agent({"inbox": {"settle_ms": 800}}).start(probe)
    data = tone_wav(2.0)
    with open(agent.inbox / "slow.wav", "wb") as f:   # one open handle, flushed chunk by chunk
        for i in range(0, len(data), 8000):
            f.write(data[i:i + 8000])
            f.flush()
            time.sleep(0.25)
    wait_files(agent.inbox / "processed", "*.json", 1)
    time.sleep(1)
    rec = records(agent.inbox / "processed")
    assert list(rec) == ["slow.wav.json"]
    assert rec["slow.wav.json"]["audio_s"] == pytest.approx(2.0, abs=0.01)


def test_writer_that_never_closes_is_taken_after_settle(make_agent, probe):
    agent = make_agent({"inbox": {"settle_ms": 500}}).start(probe)
    f = open(agent.inbox / "open.wav", "wb")
    try:
        f.write(tone_wav(1.0))
        f.flush()
        wait_files(agent.inbox / "processed", "open.wav.json", 1, timeout=10)
    finally:
        f.close()


def test_fifty_files_at_once_each_processed_exactly_once(make_agent, probe, tmp_path):
    agent = make_agent().start(probe)
    staging = tmp_path / "staging"
    staging.mkdir()
    names = [f"clip{i:02d}.wav" for i in range(50)]
    for i, name in enumerate(names):
        (staging / name).write_bytes(tone_wav(0.1 + i / 1000))
    for name in names:   # a same-filesystem mv: only a created event
        os.rename(staging / name, agent.inbox / name)
    wait_files(agent.inbox / "processed", "*.wav.json", 50)
    transcripts = probe.wait_for(f"{agent.root}/event/transcript", count=50, what="50 transcripts")
    time.sleep(1)
    assert sorted(m.json["source"]["name"] for m in probe.on(f"{agent.root}/event/transcript")) == names
    assert len({t.json["job_id"] for t in transcripts}) == 50
    assert sorted(p.name for p in (agent.inbox / "processed").glob("*.wav")) == names
    assert not list(agent.inbox.glob("*.wav"))


def test_kill9_during_jobs_then_restart_loses_nothing(make_agent, probe, tmp_path):
    whisper = ENGINES["whisper_cpp"](tmp_path)
    agent = make_agent({"transcriber": whisper}).start(probe)
    names = [f"s{i}.wav" for i in range(4)]
    speech_wav("one two three", tmp_path / "s.wav")
    for name in names:
        drop(agent.inbox, name, (tmp_path / "s.wav").read_bytes())
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running", what="a running job")
    agent.kill9()
    assert list((agent.inbox / ".processing").iterdir()), "the running job's file should be claimed"
    agent.start(probe)
    wait_files(agent.inbox / "processed", "*.wav.json", len(names), timeout=120)
    done = records(agent.inbox / "processed")
    assert sorted(done) == sorted(f"{n}.json" for n in names)   # exactly one record each
    assert not records(agent.inbox / "failed", ".error.json")
    assert not [p for p in (agent.inbox / ".processing").iterdir()]


def test_pause_holds_files_and_resume_takes_them(agent, probe):
    assert probe.request(agent.root, "pause")["data"]["paused"] is True
    drop(agent.inbox, "held.wav", tone_wav(0.3))
    time.sleep(1.5)
    assert (agent.inbox / "held.wav").exists()
    assert probe.request(agent.root, "state")["data"]["paused"] is True
    probe.request(agent.root, "resume")
    wait_files(agent.inbox / "processed", "held.wav.json", 1)


def test_retained_state_shows_the_agent_idle_after_its_jobs(agent, probe, broker):
    """A job's `done` is emitted while it still holds its job slot: the retained state must not
    be left saying `running: 1` once the files are finished, nor be republished for every job."""
    probe.request(agent.root, "pause")
    for i in range(20):
        drop(agent.inbox, f"s{i:02d}.wav", tone_wav(0.2 + i / 1000))
    time.sleep(1.0)
    before = len(probe.on(f"{agent.root}/state"))
    probe.request(agent.root, "resume")
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "done", count=20, what="20 jobs done")
    wait_until(lambda: probe.on(f"{agent.root}/state")[-1].json["jobs"]["running"] == 0, 5, "the idle state")
    time.sleep(0.5)
    running = [m.json["jobs"]["running"] for m in probe.on(f"{agent.root}/state")[before:]]
    assert 1 in running and running[-1] == 0, running
    assert len(running) < 20, f"{len(running)} states for 20 jobs"
    assert retained(broker.host, broker.port, f"{agent.root}/state").json["jobs"]["running"] == 0


def test_transcribe_and_summarize_requests(agent, probe):
    wav = tone_wav(0.4)
    answer = probe.request(agent.root, "transcribe", {"audio_b64": base64.b64encode(wav).decode()})
    assert answer["status"] == "ok", answer
    assert answer["data"]["audio_s"] == pytest.approx(0.4, abs=0.01) and answer["data"]["text"]
    text = ("The council met on Monday to discuss the new bridge. The bridge will cost four million euros. "
            "Construction of the bridge starts in spring. Several residents asked about noise.")
    summary = probe.request(agent.root, "summarize", {"text": text})
    assert summary["status"] == "ok" and "bridge" in summary["data"]["text"].lower()
    again = probe.request(agent.root, "summarize", {"text": text})
    assert again["data"]["text"] == summary["data"]["text"]
    stats = probe.request(agent.root, "stats")["data"]
    assert stats["caches"]["summaries"]["hits"] >= 1
    bad = probe.request(agent.root, "transcribe", {"audio_b64": "***not base64***"})
    assert bad["error"]["code"] == "bad_request"
    both = probe.request(agent.root, "transcribe", {"audio_b64": "", "file": "x.wav"})
    assert both["error"]["code"] == "bad_request"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/x.wav", "link.wav", "..", ".hidden.wav"])
def test_transcribe_file_outside_inbox_is_forbidden(make_agent, probe, name):
    agent = make_agent({"inbox": {"enabled": True}}).start(probe)
    probe.request(agent.root, "pause")   # keep the watcher from taking the link itself
    os.symlink("/etc/passwd", agent.inbox / "link.wav")
    answer = probe.request(agent.root, "transcribe", {"file": name})
    assert answer["error"]["code"] == "forbidden", answer


def test_transcribe_file_request_and_busy(make_agent, probe, tmp_path):
    agent = make_agent({"transcriber": ENGINES["whisper_cpp"](tmp_path)}).start(probe)
    probe.request(agent.root, "pause")
    speech_wav("please call me back tomorrow", agent.inbox / "call.wav")
    wav = (agent.inbox / "call.wav").read_bytes()
    first = {"audio_b64": base64.b64encode(wav).decode()}
    probe.publish(f"{agent.root}/request/transcribe", {**first, "transaction": "t1"})
    probe.wait_for(f"{agent.root}/event/job", lambda m: m.json["state"] == "running", what="job running")
    busy = probe.request(agent.root, "transcribe", first)
    assert busy["error"]["code"] == "busy" and busy["error"]["retry_after_s"] > 0
    probe.wait_for(f"{agent.root}/response/transcribe", lambda m: m.json["transaction"] == "t1", timeout=60)
    answer = probe.request(agent.root, "transcribe", {"file": "call.wav"}, timeout=60)
    assert answer["status"] == "ok", answer
    assert words_found(answer["data"]["text"], "please call me back tomorrow") >= 0.6
    assert (agent.inbox / "processed" / "call.wav.json").exists()
    rejected = [m.json for m in probe.on(f"{agent.root}/event/job") if m.json["state"] == "rejected"]
    assert rejected and rejected[0]["error"]["code"] == "busy"


@pytest.mark.slow
def test_llama_server_killed_between_jobs_is_restarted(make_agent, probe, tmp_path):
    """The real llama.cpp server (llama-cpp-python) with Gemma 3 270M, kept running by the agent."""
    import psutil
    from tests.support.broker import free_port
    from tests.support.llama import gemma_model_path, llama_server_command
    model = gemma_model_path()
    agent = make_agent({"summarizer": {"engine": "llama_server", "min_words": 3, "max_tokens": 24,
                                       "timeout_s": 120,
                                       "llama_server": {"command": llama_server_command(), "model": str(model),
                                                        "port": free_port(), "timeout_s": 90,
                                                        "health_interval_s": 2}}}).start(probe)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["summarizer"]["ready"], timeout=180,
                   what="llama server warmed up")
    drop(agent.inbox, "one.wav", tone_wav(0.3))
    first = probe.wait_for(f"{agent.root}/event/summary", timeout=180, what="first summary")[0].json
    assert first["engine"] == "llama_server" and first["text"]

    servers = [p for p in psutil.Process(agent.proc.pid).children(recursive=True)
               if "llama_cpp.server" in " ".join(p.cmdline())]
    assert servers, "the agent should keep a llama.cpp server child"
    for s in servers:
        s.kill()
    drop(agent.inbox, "two.wav", tone_wav(0.4, freq=600))
    second = probe.wait_for(f"{agent.root}/event/summary", lambda m: m.json["source"]["name"] == "two.wav",
                            timeout=240, what="summary after the server was killed")[0].json
    assert second["engine"] == "llama_server" and second["text"]
    restarted = [p for p in psutil.Process(agent.proc.pid).children(recursive=True)
                 if "llama_cpp.server" in " ".join(p.cmdline())]
    assert restarted and {p.pid for p in restarted}.isdisjoint({s.pid for s in servers})


def test_speech_seconds_measured_and_identical_audio_hits_the_vad_cache(agent, probe, tmp_path):
    speech_wav("the quick brown fox jumps over the lazy dog", tmp_path / "s.wav", pad_s=0.5)
    data = (tmp_path / "s.wav").read_bytes()
    drop(agent.inbox, "first.wav", data)
    wait_files(agent.inbox / "processed", "first.wav.json", 1)
    drop(agent.inbox, "again.wav", data)                    # the same bytes under another name
    drop(agent.inbox, "silence.wav", tone_wav(1.0, level=0.0))
    wait_files(agent.inbox / "processed", "*.wav.json", 3)
    done = records(agent.inbox / "processed")
    speech = done["first.wav.json"]["speech_s"]
    assert 1.0 < speech <= done["first.wav.json"]["audio_s"] - 0.8   # the padding is not speech
    assert done["again.wav.json"]["speech_s"] == speech
    assert done["silence.wav.json"]["speech_s"] == 0
    vad = probe.request(agent.root, "stats")["data"]["caches"]["vad"]
    assert vad["hits"] >= 1 and vad["misses"] >= 2
