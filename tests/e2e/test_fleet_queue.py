"""A fleet is a work queue: every shared job published once is done and answered exactly once.

Three agents (real Mosquitto, one job slot each, the whisper_cpp stand-in that answers each
input with a digest of its PCM) take bursts of distinct spoken jobs (espeak-ng), each published
once with QoS 1 by a sender that never resends, while an observer subscribes to `#` (which makes
the broker acknowledge a publish even when no worker takes it, so silence would go unnoticed).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
import wave
from collections import defaultdict

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.probe import Probe
from tests.support.speech import LONG_SENTENCES, UTTERANCES, utterance
from tests.support.whisper_cpp_standin import pcm_digest
from tests.support.fleet import JOBS_TOPIC, NO_MATCHING_SUBSCRIBERS, worker_config


def speech_wav(text: str) -> bytes:
    samples = utterance(text)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


SENTENCES = UTTERANCES + LONG_SENTENCES + ("Open the garage door", "Play some quiet music in the hall",
                                           "How long until the bus arrives", "Lock the front door tonight",
                                           "Water the plants on Sunday", "Call grandma after lunch")


class OnceSender:
    """Publishes each job exactly once (QoS 1, MQTT 5) and records every PUBACK reason and answer."""

    def __init__(self, host: str, port: int) -> None:
        self.reply_to = f"voice/results/{uuid.uuid4().hex[:6]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"once-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.lock = threading.Condition()
        self.answers: dict[str, list[dict]] = defaultdict(list)
        self.reasons: dict[int, int] = {}
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(self.reply_to, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10), "sender subscribed to its reply topic"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            self.reasons[mid] = reason_code.value
            self.lock.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        answer = json.loads(msg.payload)
        with self.lock:
            self.answers[answer["job_id"]].append(answer)
            self.lock.notify_all()

    def send(self, job_id: str, wav: bytes) -> int:
        body = {"job_id": job_id, "audio_b64": base64.b64encode(wav).decode(), "reply_to": self.reply_to}
        return self.client.publish(JOBS_TOPIC, json.dumps(body), qos=1).mid

    def final(self, job_id: str) -> list[dict]:
        return [a for a in self.answers.get(job_id, []) if a["status"] != "accepted"]

    def wait_final(self, job_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not all(self.final(j) for j in job_ids):
                left = deadline - time.monotonic()
                assert left > 0, f"no final answer after {timeout}s for {[j for j in job_ids if not self.final(j)]}"
                self.lock.wait(left)

    def wait_puback(self, mid: int, timeout: float = 10) -> int:
        with self.lock:
            assert self.lock.wait_for(lambda: mid in self.reasons, timeout), f"PUBACK for mid {mid}"
            return self.reasons[mid]


@pytest.mark.parametrize("jobs", [6, 12])
def test_burst_of_jobs_published_once_each_done_and_answered_once(make_agent, broker, tmp_path, jobs):
    """6 = twice the fleet's slots (each worker holds one running and one waiting job); 12 = four
    times: the surplus goes back to the group until a worker has room."""
    observer = Probe(broker.host, broker.port, subscribe=("#",))
    config = worker_config(tmp_path)
    config["jobs"]["max_concurrent"] = 1
    agents = [make_agent(config, name=f"w{i}", device_id=f"worker-{i}",
                         env={"WHISPER_STANDIN_DELAY_S": "0.5"}) for i in range(3)]
    for a in agents:
        a.start(observer)
    for a in agents:
        observer.wait_for(f"{a.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=60,
                          what=f"{a.device_id} transcriber ready")
    wavs = {f"say-{n:02d}": speech_wav(SENTENCES[n]) for n in range(jobs)}
    assert len({pcm_digest(w) for w in wavs.values()}) == jobs   # distinct audio, distinct answers
    sender = OnceSender(broker.host, broker.port)
    try:
        started = time.monotonic()
        mids = [sender.send(job_id, wav) for job_id, wav in wavs.items()]   # one burst, never resent
        sender.wait_final(list(wavs), timeout=120)
        elapsed = time.monotonic() - started
        time.sleep(2.0)   # a second answer or a second run would show within this
        assert all(sender.wait_puback(mid) == 0 for mid in mids)
        by_device: dict[str, int] = defaultdict(int)
        for job_id, wav in wavs.items():
            final = sender.final(job_id)
            assert len(final) == 1, (job_id, sender.answers[job_id])   # never busy, never twice
            assert final[0]["status"] == "ok", final[0]
            assert final[0]["text"] == pcm_digest(wav), job_id
            accepted = [a for a in sender.answers[job_id] if a["status"] == "accepted"]
            assert [a["device_id"] for a in accepted] == [final[0]["device_id"]], sender.answers[job_id]
            by_device[final[0]["device_id"]] += 1
        assert len(by_device) > 1, by_device
        done = [m.json for m in observer.on("voice/+/event/job")
                if m.json["state"] == "done" and m.json["source"]["kind"] == "fleet"]
        assert sorted(d["source"]["name"] for d in done) == sorted(wavs)   # each run exactly once
        stats = [observer.request(a.root, "stats")["data"]["fleet"] for a in agents]
        assert all(s["held"] == 0 for s in stats), stats
        forwarded = sum(s["forwarded"] for s in stats)
        if jobs > 6:
            assert forwarded > 0, stats   # the surplus went back to the group, not into one queue
        print(f"{jobs} jobs in {elapsed:.1f}s; per device {dict(by_device)}; handed back {forwarded}")
    finally:
        sender.close()
        observer.close()


def test_no_worker_the_sender_learns_it_from_the_puback(make_agent, broker, tmp_path):
    """Nothing but a non-worker device is connected: PUBACK reason 16 "no matching subscribers".
    Once a worker is there the same publish is taken and answered."""
    probe = Probe(broker.host, broker.port, subscribe=("voice/+/availability", "voice/+/state"))
    idle = make_agent({**worker_config(tmp_path), "fleet": {"worker": False}}, name="idle", device_id="idle")
    idle.start(probe)
    sender = OnceSender(broker.host, broker.port)
    try:
        wav = speech_wav(UTTERANCES[0])
        assert sender.wait_puback(sender.send("nobody-1", wav)) == NO_MATCHING_SUBSCRIBERS
        time.sleep(1.0)
        assert not sender.answers.get("nobody-1")
        worker = make_agent(worker_config(tmp_path), name="w", device_id="worker").start(probe)
        probe.wait_for(f"{worker.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=60,
                       what="transcriber ready")
        assert sender.wait_puback(sender.send("somebody-1", wav)) == 0
        sender.wait_final(["somebody-1"], timeout=30)
        assert sender.final("somebody-1")[0]["text"] == pcm_digest(wav)
        worker.terminate()   # a worker that stopped leaves the group: the sender is told again
        assert sender.wait_puback(sender.send("nobody-2", wav)) == NO_MATCHING_SUBSCRIBERS
    finally:
        sender.close()
        probe.close()


def test_waiting_job_survives_a_restart_and_runs_once(make_agent, broker, tmp_path):
    """A job waiting in the spool when the device stops runs at the next start, answered once."""
    observer = Probe(broker.host, broker.port, subscribe=("#",))
    agent = make_agent(worker_config(tmp_path), env={"WHISPER_STANDIN_DELAY_S": "1.5"}).start(observer)
    observer.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=60,
                      what="transcriber ready")
    sender = OnceSender(broker.host, broker.port)
    try:
        first, second = speech_wav(UTTERANCES[1]), speech_wav(UTTERANCES[2])
        sender.send("first", first)
        sender.send("second", second)
        observer.wait_for(sender.reply_to, lambda m: m.json["status"] == "accepted", timeout=20, what="first accepted")
        agent.terminate()   # "first" finishes within the grace; "second" stays in the spool
        sender.wait_final(["first"], timeout=10)
        assert not sender.final("second"), dict(sender.answers)
        assert list((agent.workdir / "state" / "fleet").glob("*.job")), "second is spooled"
        agent.start(observer)
        sender.wait_final(["second"], timeout=60)
        time.sleep(1.0)
        assert len(sender.final("first")) == len(sender.final("second")) == 1
        assert sender.final("second")[0]["text"] == pcm_digest(second)
        assert not list((agent.workdir / "state" / "fleet").iterdir())
    finally:
        sender.close()
        observer.close()
