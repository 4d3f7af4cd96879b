"""Fleet-wide work: shared transcription jobs over an MQTT 5 shared subscription.

Three agents subscribe to `$share/<group>/voice/jobs/transcribe` with one job slot each, and run
the real whisper_cpp engine against a stand-in program (tests/support/whisper_cpp_standin.py)
that takes 0.2 s per input. A sender sends 30 jobs at once: every job must be done exactly once,
by more than one device, with its result at `reply_to`, and the sender never has a reason to
resend (no `busy`, no PUBACK "no matching subscribers", no silence). The burst tests with spoken
audio and a sender that cannot resend at all are in tests/e2e/test_fleet_queue.py.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from collections import defaultdict

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.http_stub import HTTPStub, Reply
from tests.support.inbox import drop
from tests.support.probe import Probe
from tests.support.wait import wait_until
from tests.support.whisper_cpp_standin import pcm_digest
from tests.support.wavs import tone_wav
from tests.support.fleet import JOBS_TOPIC, NO_MATCHING_SUBSCRIBERS, worker_config


class Sender:
    """A fleet controller collecting every answer, and counting every reason a sender of the old
    protocol had to resend: a `busy` / `memory_pressure` answer, a PUBACK saying *no matching
    subscribers*, or no answer at all (not even `accepted`) within SILENCE_S. The tests assert
    these counts stay 0. Each attempt carries its own echoed transaction.
    """

    SILENCE_S = 60.0

    def __init__(self, host: str, port: int, reply_to: str) -> None:
        self.reply_to = reply_to
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sender-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.lock = threading.Condition()
        self.results: dict[str, list[dict]] = defaultdict(list)   # job_id -> every answer
        self.jobs: dict[str, dict] = {}
        self.props: dict[str, Properties | None] = {}
        self.attempt: dict[str, int] = defaultdict(int)
        self.sent_at: dict[str, float] = {}
        self.answered: set[str] = set()          # job ids whose current attempt got an answer
        self.unrouted = self.busy = self.silent = 0
        self._mids: dict[int, tuple[str, int]] = {}
        self._early: dict[int, int] = {}
        self._retry: list[tuple[float, str]] = []
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(reply_to, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _tag(self, job_id: str) -> str:
        return self.jobs[job_id].get("transaction") or f"{job_id}#{self.attempt[job_id]}"

    def send(self, job_id: str, body: dict, properties: Properties | None = None) -> None:
        with self.lock:
            self.jobs[job_id], self.props[job_id] = body, properties
            self.attempt[job_id] += 1
            attempt = self.attempt[job_id]
            self.answered.discard(job_id)
            self.sent_at[job_id] = time.monotonic()
            payload = json.dumps({"job_id": job_id, **body, "transaction": self._tag(job_id)})
        # Never hold self.lock around publish(): paho calls on_publish holding its own lock.
        info = self.client.publish(JOBS_TOPIC, payload, qos=1, properties=properties)
        with self.lock:
            early = self._early.pop(info.mid, None)   # the PUBACK beat us here
            if early is None:
                self._mids[info.mid] = (job_id, attempt)
            else:
                self._acked(job_id, attempt, early)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            sent = self._mids.pop(mid, None)
            if sent is None:
                self._early[mid] = reason_code.value
            else:
                self._acked(*sent, reason_code.value)
            self.lock.notify_all()

    def _acked(self, job_id: str, attempt: int, reason: int) -> None:
        if reason == NO_MATCHING_SUBSCRIBERS and attempt == self.attempt[job_id]:
            self.unrouted += 1   # every worker was busy and nobody else listens: dropped
            self.answered.add(job_id)
            self._retry.append((time.monotonic() + random.uniform(0.05, 0.25), job_id))

    def _on_message(self, client, userdata, msg) -> None:
        answer = json.loads(msg.payload)
        job_id = answer["job_id"]
        with self.lock:
            self.results[job_id].append(answer)
            current = job_id in self.jobs and answer.get("transaction") == self._tag(job_id)
            if current:
                self.answered.add(job_id)
                if answer["status"] == "error" and answer["error"]["code"] in ("busy", "memory_pressure"):
                    self.busy += 1
                    self._retry.append((time.monotonic() + answer["error"]["retry_after_s"], job_id))
            self.lock.notify_all()

    def ok(self, job_id: str) -> list[dict]:
        return [a for a in self.results.get(job_id, []) if a["status"] == "ok"]

    def accepted(self, job_id: str) -> list[dict]:
        return [a for a in self.results.get(job_id, []) if a["status"] == "accepted"]

    def _final_error(self, job_id: str) -> bool:
        return any(a["status"] == "error" and a["error"]["code"] not in ("busy", "memory_pressure")
                   for a in self.results.get(job_id, []))

    def run_until_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                now = time.monotonic()
                due = [j for t, j in self._retry if t <= now]
                self._retry = [(t, j) for t, j in self._retry if t > now]
                for job_id in self.jobs:
                    if (job_id not in self.answered and now - self.sent_at[job_id] > self.SILENCE_S
                            and not self.ok(job_id) and job_id not in due):
                        self.silent += 1
                        due.append(job_id)
                missing = [j for j in self.jobs if not self.ok(j) and not self._final_error(j)]
            for job_id in due:
                self.send(job_id, self.jobs[job_id], self.props[job_id])
            if not missing:
                return
            assert time.monotonic() < deadline, (
                f"{len(missing)} job(s) without a result after {timeout}s: {missing[:5]}; "
                f"answers: {dict(list(self.results.items())[:3])}")
            with self.lock:
                self.lock.wait(0.05)


@pytest.mark.parametrize("monitor", ["narrow", "everything"])
def test_thirty_shared_jobs_each_done_once_across_the_fleet(make_agent, broker, tmp_path, monitor):
    """`narrow`: nobody else matches the jobs topic (a job dropped for want of a worker would come
    back as PUBACK *no matching subscribers*); `everything`: a monitor on `#` hides that, so a
    dropped job would be silence. Neither happens: workers stay subscribed and hold or hand back
    what they cannot start."""
    topics = ("#",) if monitor == "everything" else ("voice/+/availability", "voice/+/state", "voice/+/event/job")
    probe = Probe(broker.host, broker.port, subscribe=topics)
    config = worker_config(tmp_path)
    agents = [make_agent(config, name=f"w{i}", device_id=f"worker-{i}") for i in range(3)]
    for a in agents:
        a.start(probe)
    for a in agents:   # engines loaded (the stand-in ran its warm-up)
        probe.wait_for(f"{a.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=30,
                       what=f"{a.device_id} transcriber ready")
    sender = Sender(broker.host, broker.port, "voice/results/controller")
    try:
        wavs = {f"job-{n:02d}": tone_wav(0.3 + 0.01 * n, freq=200 + 20 * n) for n in range(30)}
        started = time.monotonic()
        for job_id, wav in wavs.items():   # one burst: the broker spreads them
            sender.send(job_id, {"audio_b64": base64.b64encode(wav).decode(), "reply_to": sender.reply_to})
        sender.run_until_done(timeout=120)
        elapsed = time.monotonic() - started
        time.sleep(1.5)   # a duplicate run would answer within this
        by_device: dict[str, int] = defaultdict(int)
        for job_id, wav in wavs.items():
            ok = sender.ok(job_id)
            assert len(ok) == 1, (job_id, sender.results[job_id])
            assert ok[0]["text"] == pcm_digest(wav), (job_id, ok[0])
            assert ok[0]["engines"]["transcriber"] == "whisper_cpp"
            assert [a["device_id"] for a in sender.accepted(job_id)] == [ok[0]["device_id"]]
            by_device[ok[0]["device_id"]] += 1
        assert len(by_device) > 1, by_device
        assert sum(by_device.values()) == 30
        # done exactly once: one `done` job event per shared job across the whole fleet
        done = [m.json for m in probe.on("voice/+/event/job")
                if m.json["state"] == "done" and m.json["source"]["kind"] == "fleet"]
        assert sorted(d["source"]["name"] for d in done) == sorted(wavs), len(done)
        print(f"30 jobs in {elapsed:.1f}s; per device {dict(by_device)}; busy answers {sender.busy}, "
              f"unrouted {sender.unrouted}, silent resends {sender.silent}")
        assert sender.unrouted == sender.busy == sender.silent == 0   # each job published once
    finally:
        sender.close()
        probe.close()


def test_job_arriving_while_the_slot_is_taken_waits_here_and_runs_after(make_agent, broker, probe, tmp_path):
    """Was: the worker left the group while busy and answered late deliveries `busy`. Now "b",
    arriving while "a" holds the only slot, waits in the spool (the only worker keeps it: one
    waiting job per slot) and runs after "a", with no answer before it starts."""
    agent = make_agent(worker_config(tmp_path), env={"WHISPER_STANDIN_DELAY_S": "1.5"}).start(probe)
    sender = Sender(broker.host, broker.port, "voice/results/one")
    try:
        first, second = tone_wav(0.4, freq=300), tone_wav(0.4, freq=500)
        for job_id, wav in (("a", first), ("b", second)):
            sender.send(job_id, {"audio_b64": base64.b64encode(wav).decode(), "reply_to": sender.reply_to})
        sender.run_until_done(timeout=30)
        assert sender.busy == sender.unrouted == sender.silent == 0
        assert [r["status"] for r in sender.results["b"]] == ["accepted", "ok"]
        assert {r["device_id"] for r in sender.results["b"]} == {agent.device_id}
        assert sender.accepted("b")[0]["ts"] >= sender.ok("a")[0]["ts"]   # one slot: b ran after a
        assert sender.ok("a")[0]["text"] == pcm_digest(first)
        assert sender.ok("b")[0]["text"] == pcm_digest(second)
        assert len(sender.ok("a")) == len(sender.ok("b")) == 1
    finally:
        sender.close()


def test_url_jobs_bad_jobs_and_mqtt5_response_topic(make_agent, broker, probe, tmp_path):
    wav = tone_wav(0.5, freq=660)
    big = tone_wav(1.0)
    with HTTPStub({("GET", "/a.wav"): lambda r: Reply(200, wav, {"Content-Type": "audio/wav"}),
                   ("GET", "/big.wav"): lambda r: Reply(200, big),
                   ("GET", "/gone.wav"): lambda r: Reply(404, b"no")}) as stub:
        config = {**worker_config(tmp_path), "mqtt": {"max_payload_bytes": 25000}}
        config["fleet"] = {**config["fleet"], "url_allow": ["127.0.0.1"]}   # the stub's host, exactly
        agent = make_agent(config).start(probe)
        sender = Sender(broker.host, broker.port, "voice/results/misc")
        try:
            rt = sender.reply_to
            sender.send("url-ok", {"url": f"{stub.url}/a.wav", "reply_to": rt, "transaction": "t-1"})
            sender.send("url-404", {"url": f"{stub.url}/gone.wav", "reply_to": rt})
            sender.send("url-big", {"url": f"{stub.url}/big.wav", "reply_to": rt})
            sender.send("url-file", {"url": "file:///etc/passwd", "reply_to": rt})
            sender.send("both", {"url": f"{stub.url}/a.wav", "audio_b64": "AAAA", "reply_to": rt})
            sender.send("typo", {"audio_b64": base64.b64encode(wav).decode(), "reply_to": rt, "sumarize": False})
            sender.send("not-b64", {"audio_b64": "%%%", "reply_to": rt})
            sender.send("not-audio", {"audio_b64": base64.b64encode(b"hello" * 50).decode(), "reply_to": rt})
            props = Properties(PacketTypes.PUBLISH)   # MQTT 5: Response Topic instead of reply_to
            props.ResponseTopic = rt
            props.CorrelationData = b"corr-42"
            sender.send("by-props", {"audio_b64": base64.b64encode(wav).decode()}, properties=props)
            sender.run_until_done(timeout=60)
            ok = sender.ok("url-ok")[0]
            assert ok["text"] == pcm_digest(wav) and ok["transaction"] == "t-1"
            assert ok["device_id"] == agent.device_id and ok["agent_job_id"]

            def code(job_id: str) -> str:
                return next(a["error"]["code"] for a in sender.results[job_id]
                            if a["status"] == "error" and a["error"]["code"] != "busy")
            assert code("url-404") == "fetch_failed"
            assert code("url-big") == "payload_too_large"
            assert code("url-file") == "bad_request"
            assert code("both") == "bad_request"
            assert code("typo") == "bad_request"
            assert code("not-b64") == "bad_request"
            assert code("not-audio") in ("corrupt", "unsupported_format")
            assert sender.ok("by-props")[0]["text"] == pcm_digest(wav)
            corr = [m.properties.CorrelationData for m in probe.on(rt) if json.loads(m.payload)["job_id"] == "by-props"]
            assert corr and set(corr) == {b"corr-42"}   # on every answer: busy, accepted, ok
            assert [r.path for r in stub.requests].count("/a.wav") == 1   # "both" was refused before any fetch
            # a job without any reply topic is dropped (logged), and the worker carries on
            probe.publish(JOBS_TOPIC, {"job_id": "nowhere", "audio_b64": "AAAA"})
            probe.publish(JOBS_TOPIC, b"not json")
            assert probe.request(agent.root, "ping")["status"] == "ok"
            assert "dropped a job that names no reply topic" in agent.log()
        finally:
            sender.close()


def test_paused_worker_starts_no_shared_job_until_resumed(make_agent, broker, probe, tmp_path):
    """Was: a paused worker left the group and the broker dropped the job (the sender resent it).
    Now the paused device starts nothing and hands the job back to the group; being the only
    worker it gets it back (held a little longer each time) and runs it once resumed, unsent again."""
    agent = make_agent(worker_config(tmp_path)).start(probe)
    sender = Sender(broker.host, broker.port, "voice/results/pause")
    try:
        body = {"audio_b64": base64.b64encode(tone_wav(0.3)).decode(), "reply_to": sender.reply_to}
        assert probe.request(agent.root, "pause")["status"] == "ok"
        sender.send("while-paused", body)
        time.sleep(2.0)
        assert not sender.results.get("while-paused")   # not started while paused
        assert probe.request(agent.root, "resume")["status"] == "ok"
        sender.run_until_done(timeout=20)
        assert len(sender.ok("while-paused")) == 1
        assert sender.silent == sender.unrouted == sender.busy == 0
        assert [m for m in probe.on(JOBS_TOPIC) if m.properties is not None
                and ("voice-agent-handed-back-by", agent.device_id) in getattr(m.properties, "UserProperty", [])]
        # fleet.worker switched off in the local file (not over MQTT: it widens what the device
        # accepts): the device leaves the group, and joins again when switched on
        def subscribed() -> bool:
            return probe.request(agent.root, "stats")["data"]["fleet"]["subscribed"]
        agent.write_config({**agent.config, "fleet": {**agent.config["fleet"], "worker": False}})
        wait_until(lambda: not subscribed(), timeout=20, what="left the group")
        agent.write_config(agent.config)
        wait_until(subscribed, timeout=20, what="joined the group again")
        sender.send("after-on", body)
        sender.run_until_done(timeout=20)
        assert len(sender.ok("after-on")) == 1
    finally:
        sender.close()


def test_worker_rejoins_the_group_as_soon_as_an_inbox_job_frees_the_slot(make_agent, broker, probe, tmp_path):
    """The job slot wakes the fleet worker: a shared job sent 0.1 s after an inbox job ended
    finds the device in its group (the worker once polled the slot every 0.5 s, so such a job
    was mostly dropped by the broker as having no subscriber)."""
    config = {**worker_config(tmp_path), "inbox": {"enabled": True}}
    agent = make_agent(config, env={"WHISPER_STANDIN_DELAY_S": "0.4"}).start(probe)
    probe.wait_for(f"{agent.root}/state", lambda m: m.json["engines"]["transcriber"]["ready"], timeout=30,
                   what="transcriber ready")
    sender = Sender(broker.host, broker.port, "voice/results/rejoin")
    try:
        for n in range(3):
            drop(agent.inbox, f"local-{n}.wav", tone_wav(0.4, freq=300 + 50 * n))
            probe.wait_for(f"{agent.root}/event/job", lambda m, n=n: m.json["state"] == "done"
                           and m.json["source"]["name"] == f"local-{n}.wav", timeout=20, what=f"inbox job {n} done")
            time.sleep(0.1)
            sender.send(f"shared-{n}", {"audio_b64": base64.b64encode(tone_wav(0.3, freq=900 + 50 * n)).decode(),
                                        "reply_to": sender.reply_to})
            sender.run_until_done(timeout=20)
        assert sender.unrouted == sender.busy == sender.silent == 0, (sender.unrouted, sender.busy, sender.silent)
        assert all(len(sender.ok(f"shared-{n}")) == 1 for n in range(3))
    finally:
        sender.close()
