"""Fleet URL jobs cannot reach what the operator did not list (server-side request forgery).

A canary HTTP server on loopback records every request: a refused URL must leave it untouched.
"""

from __future__ import annotations

import socket
import threading
import time

from tests.support.http_stub import HTTPStub, Reply
from tests.support.whisper_cpp_standin import pcm_digest
from tests.support.wait import wait_until
from tests.support.wavs import tone_wav
from tests.support.fleet import JOBS_TOPIC, worker_config


WAV = tone_wav(0.3, freq=440)


def subscribed(probe, agent) -> None:
    """Jobs published before the worker joined its group would be dropped (the probe on `#` hides it)."""
    wait_until(lambda: probe.request(agent.root, "stats")["data"]["fleet"]["subscribed"], timeout=20,
               what=f"{agent.device_id} in its group")


def canary() -> HTTPStub:
    return HTTPStub({("GET", "/a.wav"): lambda r: Reply(200, WAV, {"Content-Type": "audio/wav"})})


def test_url_jobs_to_loopback_are_refused_unless_listed_exactly_and_the_canary_is_not_hit(make_agent, probe, tmp_path):
    with canary() as stub:
        port = stub.url.rsplit(":", 1)[1]
        # `*.0.0.1` matches the host 127.0.0.1 as a wildcard, never as an exact entry: loopback
        # stays refused. `localhost` is not listed at all.
        config = worker_config(tmp_path)
        config["fleet"]["url_allow"] = ["*.0.0.1", "files.example.org"]
        agent = make_agent(config).start(probe)
        subscribed(probe, agent)
        off = make_agent(worker_config(tmp_path), name="off", device_id="off")   # default: URL jobs off
        jobs = {"wildcard": f"http://127.0.0.1:{port}/a.wav", "unlisted": f"http://localhost:{port}/a.wav"}
        for job_id, url in jobs.items():
            probe.publish(JOBS_TOPIC, {"job_id": job_id, "url": url, "reply_to": "voice/results/url"})
        for job_id in jobs:
            answer = probe.wait_for("voice/results/url", lambda m, j=job_id: m.json["job_id"] == j and m.json["status"] == "error",
                                    timeout=30, what=f"{job_id} refused")[0].json
            assert answer["error"]["code"] == "forbidden", answer
            assert answer["device_id"] == agent.device_id
        agent.terminate()
        off.start(probe)
        subscribed(probe, off)
        probe.publish(JOBS_TOPIC, {"job_id": "off", "url": f"http://127.0.0.1:{port}/a.wav", "reply_to": "voice/results/url"})
        answer = probe.wait_for("voice/results/url", lambda m: m.json["job_id"] == "off", timeout=30, what="refused")[0].json
        assert answer["error"]["code"] == "forbidden" and "url_allow" in answer["error"]["message"], answer
        assert stub.requests == []   # nothing reached the canary


def test_url_job_from_a_host_listed_exactly_is_fetched(make_agent, probe, tmp_path):
    with canary() as stub:
        config = worker_config(tmp_path)
        config["fleet"]["url_allow"] = ["127.0.0.1"]
        subscribed(probe, make_agent(config).start(probe))
        probe.publish(JOBS_TOPIC, {"job_id": "listed", "url": f"{stub.url}/a.wav", "reply_to": "voice/results/url"})
        answer = probe.wait_for("voice/results/url", lambda m: m.json["status"] in ("ok", "error"), timeout=30,
                                what="result")[0].json
        assert answer["status"] == "ok" and answer["text"] == pcm_digest(WAV), answer
        assert [r.path for r in stub.requests] == ["/a.wav"]


class Trickle:
    """A STAND-IN file server that announces a whole WAV (Content-Length) and then sends one byte
    every 0.2 s: each wait for bytes is short, the download never ends (issue 22)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {len(WAV)}\r\n\r\n".encode())
                for byte in WAV:
                    if self.closed.wait(0.2):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def test_url_job_from_a_trickling_server_ends_at_the_fetch_deadline(make_agent, probe, tmp_path):
    """fleet.fetch_timeout_s bounds the whole download, not each wait for bytes: the job fails with
    fetch_failed at the deadline and the worker takes the next job."""
    trickle = Trickle()
    try:
        with canary() as stub:
            config = worker_config(tmp_path, fetch_timeout_s=2, url_allow=["127.0.0.1"])
            agent = make_agent(config).start(probe)
            subscribed(probe, agent)
            sent = time.monotonic()
            probe.publish(JOBS_TOPIC, {"job_id": "slow", "url": f"{trickle.url}/a.wav", "reply_to": "voice/results/url"})
            answer = probe.wait_for("voice/results/url", lambda m: m.json["job_id"] == "slow" and m.json["status"] != "accepted", timeout=20,
                                    what="the trickled job's answer")[0].json
            took = time.monotonic() - sent
            assert answer["status"] == "error" and answer["error"]["code"] == "fetch_failed", answer
            assert "longer than 2 s" in answer["error"]["message"] and 1.5 < took < 8, (answer, took)
            probe.publish(JOBS_TOPIC, {"job_id": "next", "url": f"{stub.url}/a.wav", "reply_to": "voice/results/url"})
            answer = probe.wait_for("voice/results/url", lambda m: m.json["job_id"] == "next" and m.json["status"] != "accepted", timeout=20,
                                    what="next job")[0].json
            assert answer["status"] == "ok" and answer["text"] == pcm_digest(WAV), answer
    finally:
        trickle.close()
