"""Throughput features: batch transcription and overlapping pipeline stages, seen from outside."""

from __future__ import annotations

import json
import sys
import time

from tests.support.http_stub import HTTPStub, json_reply
from tests.support.models import needs_whisper_cpp, speech_wav, whisper_cpp_binary, whisper_cpp_model
from tests.support.inbox import drop, records, wait_files, words_found
from tests.support.invocation_log import recording_wrapper


@needs_whisper_cpp
def test_waiting_files_are_transcribed_in_one_whisper_run(make_agent, probe, tmp_path):
    wrapper, log = recording_wrapper(tmp_path, whisper_cpp_binary())
    agent = make_agent({"transcriber": {"engine": "whisper_cpp", "whisper_cpp": {
        "binary": str(wrapper), "model": str(whisper_cpp_model()), "threads": 2, "batch_max": 8,
        "batch": "concat"}},
        "summarizer": {"engine": "none"}}).start(probe)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=60,
                   what="whisper.cpp warmed up")
    probe.request(agent.root, "pause")
    sentences = {"a.wav": "open the front door", "b.wav": "close the garage", "c.wav": "play some music"}
    for name, text in sentences.items():
        speech_wav(text, tmp_path / name)
        drop(agent.inbox, name, (tmp_path / name).read_bytes())
    drop(agent.inbox, "broken.wav", b"RIFF\x00\x00\x00\x00WAVEjunk")
    wait_queued(probe, agent.root, [*sentences, "broken.wav"])   # all four settled and waiting
    runs_before = len(log.read_text().splitlines())
    probe.request(agent.root, "resume")
    wait_files(agent.inbox / "processed", "*.wav.json", 3, timeout=120)
    wait_files(agent.inbox / "failed", "broken.wav.error.json", 1)
    runs = [json.loads(line) for line in log.read_text().splitlines()[runs_before:]]
    assert len(runs) == 1, f"expected one whisper.cpp run for the batch, got {runs}"
    # `batch: concat` (opt-in): the three files joined into ONE pack in tmpfs, split again
    # from -ojf JSON
    assert sum(arg == "-f" for arg in runs[0]) == 1 and runs[0][runs[0].index("-f") + 1].startswith("/dev/shm/")
    assert "-ojf" in runs[0]
    done = records(agent.inbox / "processed")
    for name, text in sentences.items():
        assert words_found(done[f"{name}.json"]["transcript"], text) >= 0.6, done[f"{name}.json"]
    assert len({m.json["job_id"] for m in probe.on(f"{agent.root}/event/transcript")}) == 3


def wait_queued(probe, root: str, names: list[str]) -> None:
    """The positive marker that files settled: the inbox announces each as `queued` once complete."""
    probe.wait_for(f"{root}/event/job", lambda m: m.json["state"] == "queued" and m.json["source"]["name"] in names,
                   count=len(names), timeout=20, what=f"{names} queued")


STANDIN_WHISPER = """#!{python}
# A stand-in for the whisper.cpp CLI (same arguments and output contract) that takes a fixed
# time and records when it ran: the test needs controllable stage timings, not real inference.
import sys, time
t0 = time.time()
time.sleep({delay})
with open({log!r}, "a") as f:
    f.write("transcribe %f %f\\n" % (t0, time.time()))
print("stand in transcript number %f of a clip about the weather and the garden" % t0)
"""


def test_stages_overlap_but_each_stage_stays_bounded(make_agent, probe, tmp_path):
    timeline = tmp_path / "timeline.txt"
    whisper = tmp_path / "whisper-standin"
    whisper.write_text(STANDIN_WHISPER.format(python=sys.executable, delay=0.6, log=str(timeline)))
    whisper.chmod(0o755)
    (tmp_path / "model.bin").write_bytes(b"stand-in model")

    def chat(request):   # OpenAI chat-completions protocol, answering after a fixed time
        t0 = time.time()
        time.sleep(0.6)
        with open(timeline, "a") as f:
            f.write(f"summarize {t0} {time.time()}\n")
        return json_reply({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a short summary"}, "finish_reason": "stop"}]})

    with HTTPStub({("POST", "/v1/chat/completions"): chat}) as llm:
        agent = make_agent({
            "jobs": {"max_concurrent": 2},
            "transcriber": {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(whisper), "batch": False,
                                                                       "model": str(tmp_path / "model.bin")}},
            "summarizer": {"engine": "openai", "min_words": 3,
                           "openai": {"base_url": llm.url + "/v1", "api_key": "test-key"}},
        }).start(probe)
        probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"],
                       what="engines ready")
        probe.request(agent.root, "pause")
        for i in range(4):
            drop(agent.inbox, f"clip{i}.wav", _tone(i))
        wait_queued(probe, agent.root, [f"clip{i}.wav" for i in range(4)])
        timeline.write_text("")
        probe.request(agent.root, "resume")
        wait_files(agent.inbox / "processed", "*.wav.json", 4, timeout=60)
    spans = [line.split() for line in timeline.read_text().splitlines()]
    trans = sorted((float(a), float(b)) for k, a, b in spans if k == "transcribe")
    summ = sorted((float(a), float(b)) for k, a, b in spans if k == "summarize")
    assert len(trans) == 4 and len(summ) == 4
    assert not _overlapping(trans), "two transcriptions ran at once"
    assert not _overlapping(summ), "two summaries ran at once"
    assert any(a < d and c < b for a, b in trans for c, d in summ), "no transcription overlapped a summary"


def _overlapping(spans: list[tuple[float, float]]) -> bool:
    return any(spans[i][1] > spans[i + 1][0] + 0.01 for i in range(len(spans) - 1))


def _tone(i: int) -> bytes:
    from tests.support.wavs import tone_wav
    return tone_wav(0.5 + i * 0.1, freq=300 + 50 * i)
