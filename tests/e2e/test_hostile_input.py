"""Hostile input: MQTT requests from hypothesis, broken audio, odd file names, path tricks.

Each test runs one real agent as a subprocess against a real Mosquitto and throws the input at it
from outside. The promise checked everywhere: every request gets an answer (ok or a typed error,
never `internal`), every file ends in processed/ or failed/ with a code, nothing escapes the
inbox, and the agent stays up with flat memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import struct
import time
import uuid
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.wait import wait_until
from tests.support.wavs import tone_wav

DERANDOMIZE = os.environ.get("FUZZ_RANDOM") is None   # CI runs the same cases; FUZZ_RANDOM=1 explores
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
COMMANDS = ["ping", "state", "stats", "config/get", "config/set", "config/reset", "pause", "resume", "transcribe",
            "summarize"]
ERROR_CODES = {"bad_request", "unknown_command", "payload_too_large", "invalid_config", "forbidden", "not_found",
               "busy", "memory_pressure", "corrupt", "empty", "unsupported_format", "too_long", "too_large",
               "storage_error", "unsafe_value", "off_device_forbidden"}
AUDIO_CODES = {"corrupt", "empty", "unsupported_format", "too_long", "too_large", "forbidden"}
MAX_PAYLOAD = 65536
MB = 1024 * 1024


def drop(inbox: Path, name: str | bytes, data: bytes) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    target = os.path.join(os.fsencode(inbox), os.fsencode(name))
    tmp = os.path.join(os.fsencode(inbox), b".drop-" + uuid.uuid4().hex.encode() + b".part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, target)




def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


class Asker:
    """Requests with their own MQTT 5 Response Topic, so any payload (even bytes) can be matched."""

    def __init__(self, probe, root: str) -> None:
        self.probe, self.root, self.n = probe, root, 0

    def ask(self, command: str, payload: bytes, timeout: float = 30) -> dict:
        self.n += 1
        topic = f"voice/results/fuzz/{uuid.uuid4().hex}"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        props.CorrelationData = str(self.n).encode()
        self.probe.publish(f"{self.root}/request/{command}", payload, properties=props)
        msg = self.probe.wait_for(topic, timeout=timeout, what=f"an answer to {command} {payload[:80]!r}")[0]
        assert msg.properties.CorrelationData == str(self.n).encode()
        return json.loads(msg.payload)


# --- payload strategies ------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(),
                      st.text(max_size=30))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                          max_leaves=12)
FIELDS = ["transaction", "config", "text", "file", "audio_b64", "summarize", "extra", "x" * 200]


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


NAMED_PAYLOADS = [b"\xff\xfe\x00garbage", b"\xc3\x28", _nested(100_000, "list"), _nested(990, "dict"),
                  _nested(5000, "dict"), b'{"text": 1e400}', b'{"text": ' + b"1" + b"0" * 5000 + b"}",
                  b'{"transaction": 12, "text": "x"}', b'{"text": ["wrong", "type"]}', b'{"unknown_field": 1}',
                  b'{"text": "' + b"a" * (MAX_PAYLOAD + 10) + b'"}', b"   ", b"{}", b"[1, 2]", b"null"]

raw_payloads = st.one_of(
    st.binary(max_size=2000),                                                          # random bytes
    st.binary(min_size=1, max_size=200).map(lambda b: b"\xff\xfe" + b + b"\xc3\x28"),  # invalid UTF-8
    st.tuples(st.sampled_from([10, 500, 990, 5000, 100_000]), st.sampled_from(["list", "dict"]))
    .map(lambda t: _nested(*t)),                                                       # deeply nested
    st.sampled_from([b'{"text": 1e400}', b'{"x": -1e400}', b'{"summarize": 1e400}', b"1e400", b"NaN",
                     b'{"config": {"jobs": {"max_concurrent": 1e400}}}',
                     b'{"config": {"jobs": {"cache_size": ' + b"9" * 5000 + b"}}}",       # 10**5000 as text
                     b'{"text": ' + b"1" + b"0" * 5000 + b"}", b'{"transaction": ' + b"7" * 4400 + b"}",
                     b'{"config": {"jobs": {"timeout_s": NaN}}}', b'{"config": {"jobs": {"retry_after_s": Infinity}}}',
                     b'{"transaction": "\\ud800"}', b'{"text": "\\u0000"}', b"\x00" * 64, b"   ", b"null",
                     b'"just a string"', b"[]", b"{}" * 2]),
    st.integers(MAX_PAYLOAD + 1, MAX_PAYLOAD * 3).map(lambda n: b'{"text": "' + b"a" * n + b'"}'),  # oversized
    st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=4)                   # wrong types, extra fields
    .map(lambda d: json.dumps(d).encode()),
)

# config/set bodies that may be valid: only sections whose change cannot cut the agent off its
# broker or its folders; anything may be garbage inside them.
junk = st.one_of(json_leaf, st.lists(json_leaf, max_size=3), st.dictionaries(st.text(max_size=6), json_leaf,
                                                                             max_size=3))
safe_config = st.fixed_dictionaries({}, optional={
    "jobs": st.fixed_dictionaries({}, optional={"max_concurrent": st.one_of(st.integers(-1, 40), junk),
                                                "retry_after_s": st.one_of(st.floats(-1, 4000), junk),
                                                "cache_size": st.one_of(st.integers(-5, 200_000), junk),
                                                "bogus": junk}),
    "telemetry": st.fixed_dictionaries({}, optional={"interval_s": st.one_of(st.sampled_from([0, 5, 60, -1]), junk)}),
    "summarizer": st.fixed_dictionaries({}, optional={"max_sentences": st.one_of(st.integers(0, 60), junk),
                                                      "min_words": st.one_of(st.integers(-1, 20), junk)}),
    "outbox": st.fixed_dictionaries({}, optional={"max_messages": st.one_of(st.integers(0, 20_000_000), junk)}),
    "log_level": st.one_of(st.sampled_from(["DEBUG", "INFO", "debug", "LOUD"]), junk),
    "nonsense": junk,
})
valid_ish = st.one_of(
    st.tuples(st.just("config/set"), safe_config.map(lambda c: {"config": c})),
    st.tuples(st.just("summarize"), st.text(max_size=400).map(lambda t: {"text": t})),
    st.tuples(st.just("transcribe"),
              st.binary(max_size=600).map(lambda b: {"audio_b64": base64.b64encode(b).decode()})),
    st.tuples(st.just("transcribe"), st.sampled_from([0.1, 0.3]).map(
        lambda s: {"audio_b64": base64.b64encode(tone_wav(s)).decode(), "summarize": False})),
    st.tuples(st.just("transcribe"), st.text(max_size=40).map(lambda t: {"file": t})),
    st.tuples(st.sampled_from(["ping", "state", "stats", "config/get", "pause", "resume", "config/reset"]),
              st.just({})),
)
commands = st.one_of(st.sampled_from(COMMANDS),
                     # what MQTT allows in a topic (Mosquitto drops a client sending control characters)
                     st.text(st.characters(blacklist_characters="+#", blacklist_categories=("Cc", "Cs", "Cn", "Co")),
                             min_size=1, max_size=40).filter(lambda c: not c.startswith("/")))


@pytest.fixture
def fuzz_agent(make_agent, probe):
    return make_agent({"mqtt": {"max_payload_bytes": MAX_PAYLOAD}, "log_level": "INFO",
                       "inbox": {"max_duration_s": 30}}).start(probe)


def test_mqtt_fuzz_every_request_answered_agent_stays_up_memory_flat(fuzz_agent, probe):
    agent = fuzz_agent
    asker = Asker(probe, agent.root)
    # Warm up every path once so lazy imports and caches do not count as growth.
    for command in COMMANDS:
        asker.ask(command, b"{}")
    asker.ask("transcribe", json.dumps({"audio_b64": base64.b64encode(tone_wav(0.2)).decode()}).encode())
    asker.ask("summarize", b'{"text": "one two three four five six seven eight nine ten eleven twelve thirteen."}')
    asker.ask("config/reset", b"{}")
    rss_before = rss_mb(agent.proc.pid)
    seen: dict[str, int] = {}
    # The named hostile payloads, each against every command (hypothesis then mixes them further).
    for command in COMMANDS + ["make/coffee", "ping/../state", "ünïcødé"]:
        for payload in NAMED_PAYLOADS:
            answer = asker.ask(command, payload)
            code = answer["error"]["code"] if answer["status"] == "error" else "ok"
            seen[code] = seen.get(code, 0) + 1
            assert code in ERROR_CODES or (code == "ok" and payload in (b"   ", b"{}")), (command, payload[:80], answer)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(st.tuples(commands, raw_payloads),
                          valid_ish.map(lambda t: (t[0], json.dumps(t[1]).encode()))))
    def one_request(case):
        command, payload = case
        answer = asker.ask(command, payload)
        assert answer["status"] in ("ok", "error"), answer
        assert answer["device_id"] == agent.device_id
        if answer["status"] == "error":
            code = answer["error"]["code"]
            seen[code] = seen.get(code, 0) + 1
            assert code in ERROR_CODES, (command, payload[:200], answer)
            assert "Traceback" not in answer["error"]["message"]
            if len(payload) > MAX_PAYLOAD:
                assert code == "payload_too_large"
        else:
            seen["ok"] = seen.get("ok", 0) + 1
            if command == "config/set":
                assert answer["data"]["revision"]
        if asker.n % 20 == 0:
            assert asker.ask("ping", b"{}")["data"] == {"pong": True}

    one_request()
    assert agent.alive(), agent.log()[-3000:]
    assert asker.ask("config/reset", b"{}")["status"] == "ok"
    assert asker.ask("resume", b"{}")["status"] == "ok"
    assert asker.ask("ping", b"{}")["data"] == {"pong": True}
    time.sleep(1)
    rss_after = rss_mb(agent.proc.pid)
    print(f"\nmqtt fuzz: {asker.n} requests, answers {dict(sorted(seen.items()))}; "
          f"agent RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    assert rss_after - rss_before < 10, (rss_before, rss_after)
    assert "Traceback" not in agent.log(), agent.log()[-4000:]


def test_config_set_fuzz_on_its_own_agent_only_ok_or_invalid_config(make_agent, probe):
    """Unrestricted config/set bodies, mqtt section included: answers are only ok, invalid_config,
    forbidden (a key only the local file may set), unsafe_value / off_device_forbidden (beyond what
    MQTT may set) or bad_request (a non-object), and the agent never
    ends up unreachable by accident because every change that validates is reverted at once."""
    agent = make_agent({"log_level": "INFO"}, name="config-fuzz").start(probe)
    asker = Asker(probe, agent.root)
    sections = st.sampled_from(["mqtt", "jobs", "inbox", "listen", "vad", "transcriber", "summarizer", "memory",
                                "telemetry", "outbox", "fleet", "homeassistant", "state_dir", "device_id",
                                "log_level", "zzz"])
    keys = st.sampled_from(["port", "host", "protocol", "tls", "password", "keepalive_s", "max_concurrent",
                            "engine", "path", "enabled", "timeout_s", "interval_s", "bogus", "command"])
    body = st.one_of(junk, st.dictionaries(sections, st.one_of(junk, st.dictionaries(keys, junk, max_size=3)),
                                           max_size=3))
    seen: dict[str, int] = {}

    @settings(max_examples=40, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=list(HealthCheck))
    @given(config=body)
    def one(config):
        answer = asker.ask("config/set", json.dumps({"config": config}).encode())
        code = "ok" if answer["status"] == "ok" else answer["error"]["code"]
        seen[code] = seen.get(code, 0) + 1
        assert code in ("ok", "invalid_config", "bad_request", "forbidden", "unsafe_value", "off_device_forbidden"), \
            (config, answer)
        if code == "ok":
            assert asker.ask("config/reset", b"{}")["status"] == "ok"

    one()
    print(f"\nconfig/set fuzz: {dict(sorted(seen.items()))}")
    assert agent.alive()
    assert asker.ask("ping", b"{}")["status"] == "ok"


# --- audio ------------------------------------------------------------------------------------


def _wav(*, riff_size=None, fmt_size=16, tag=1, channels=1, rate=16000, byte_rate=None, block=None, bits=16,
         data_size=None, data=b"\x00\x01" * 800, extra_chunks=b"", form=b"WAVE") -> bytes:
    block = channels * ((bits + 7) // 8) if block is None else block
    byte_rate = rate * block if byte_rate is None else byte_rate
    fmt = struct.pack("<HHIIHH", tag, channels, rate & 0xFFFFFFFF, byte_rate & 0xFFFFFFFF, block & 0xFFFF,
                      bits & 0xFFFF)
    fmt += b"\x00" * max(0, min(fmt_size, 64) - 16)
    body = (form + b"fmt " + struct.pack("<I", fmt_size & 0xFFFFFFFF) + fmt + extra_chunks + b"data"
            + struct.pack("<I", (len(data) if data_size is None else data_size) & 0xFFFFFFFF) + data)
    return b"RIFF" + struct.pack("<I", (len(body) if riff_size is None else riff_size) & 0xFFFFFFFF) + body


def _hostile_wavs() -> dict[str, bytes]:
    rng = random.Random(20)
    good = tone_wav(0.1)
    files = {
        "riff-size-lies.wav": _wav(riff_size=0xFFFFFFF0),
        "data-size-lies.wav": _wav(data_size=10_000_000),
        "data-size-max.wav": _wav(data_size=0xFFFFFFFF),           # a streaming writer's placeholder
        "data-size-zero.wav": _wav(data_size=0),
        "zero-channels.wav": _wav(channels=0, block=0),
        "many-channels.wav": _wav(channels=65535, block=65535 * 2),
        "rate-zero.wav": _wav(rate=0),
        "rate-one.wav": _wav(rate=1),
        "rate-huge.wav": _wav(rate=0xFFFFFFFF),
        "rate-min.wav": _wav(rate=1000, data=b"\x00\x10" * 4000),
        "bits-zero.wav": _wav(bits=0, block=1),
        "bits-64-pcm.wav": _wav(bits=64),
        "bits-13.wav": _wav(bits=13),
        "block-align-wrong.wav": _wav(block=7),
        "float-nan.wav": _wav(tag=3, bits=32, data=struct.pack("<f", float("nan")) * 800),
        "float-16.wav": _wav(tag=3, bits=16),
        "fmt-size-huge.wav": _wav(fmt_size=0xFFFFFFFF),
        "fmt-size-tiny.wav": _wav(fmt_size=4),
        "extensible-bad-guid.wav": _wav(tag=0xFFFE, fmt_size=40),
        "mulaw.wav": _wav(tag=7, bits=8),
        "no-data-chunk.wav": good[:36],
        "header-only.wav": good[:44],
        "truncated-data.wav": good[: len(good) // 2],
        "truncated-mid-header.wav": good[:22],
        "odd-data.wav": _wav(data=b"\x01" * 1601),
        "many-chunks.wav": _wav(extra_chunks=b"junk\x00\x00\x00\x00" * 3000),
        "chunk-size-lies.wav": _wav(extra_chunks=b"LIST" + struct.pack("<I", 0x7FFFFFFF)),
        "not-wave-form.wav": _wav(form=b"AVI "),
        "rf64-huge.wav": b"RF64\xff\xff\xff\xffWAVEds64" + struct.pack("<IQQQI", 28, 2 ** 63, 2 ** 62, 2 ** 40, 0)
                         + _wav(data_size=0xFFFFFFFF)[12:],
        "random-bytes.wav": bytes(rng.randrange(256) for _ in range(5000)),
        "random-riff.wav": b"RIFF" + bytes(rng.randrange(256) for _ in range(3000)),
        "empty.wav": b"",
        "one-byte.wav": b"R",
        "text.wav": b"this is not audio at all\n" * 20,
        "mp3-lookalike.wav": b"ID3" + bytes(rng.randrange(256) for _ in range(500)),
        "flac-lookalike.wav": b"fLaC" + bytes(rng.randrange(256) for _ in range(500)),
        "ogg-lookalike.wav": b"OggS" + bytes(rng.randrange(256) for _ in range(500)),
    }
    for i in range(40):   # a valid file with a few header bytes flipped at random
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, 44)] = rng.randrange(256)
        files[f"mutated-{i:02d}.wav"] = bytes(data)
    return files


def _records(inbox: Path) -> dict[str, tuple[str, dict]]:
    out = {}
    for folder, suffix in (("processed", ".json"), ("failed", ".error.json")):
        for p in (inbox / folder).glob("*" + suffix) if (inbox / folder).exists() else []:
            rec = json.loads(p.read_text())
            out[rec.get("source", {}).get("name", p.name[: -len(suffix)])] = (folder, rec)
    return out


def test_hostile_audio_files_fail_with_codes_and_never_block_the_queue(make_agent, probe):
    agent = make_agent({"inbox": {"max_duration_s": 30, "settle_ms": 200}, "log_level": "INFO"}).start(probe)
    files = _hostile_wavs()
    t0 = time.monotonic()
    for name, data in files.items():
        drop(agent.inbox, name, data)
    drop(agent.inbox, "zz-good.wav", tone_wav(0.5))
    wait_until(lambda: len(_records(agent.inbox)) >= len(files) + 1, 120, "every hostile file finished")
    elapsed = time.monotonic() - t0
    records = _records(agent.inbox)
    assert records["zz-good.wav"][0] == "processed"
    failed = {n: r["code"] for n, (folder, r) in records.items() if folder == "failed"}
    processed = sorted(n for n, (folder, _) in records.items() if folder == "processed")
    for name in files:
        folder, rec = records[name]
        if folder == "failed":
            assert rec["code"] in AUDIO_CODES, (name, rec)
            assert rec["message"] and "Traceback" not in rec["message"]
    assert "Traceback" not in agent.log(), agent.log()[-4000:]
    assert probe.request(agent.root, "ping")["status"] == "ok"
    print(f"\naudio fuzz: {len(files)} hostile files in {elapsed:.1f}s: {len(failed)} failed "
          f"({', '.join(f'{c}={list(failed.values()).count(c)}' for c in sorted(set(failed.values())))}), "
          f"{len(processed) - 1} still decodable; the good file after them processed")
    for name in ("zero-channels.wav", "rate-zero.wav", "rate-huge.wav", "data-size-lies.wav", "truncated-data.wav",
                 "random-bytes.wav", "empty.wav", "bits-zero.wav", "fmt-size-huge.wav", "rf64-huge.wav"):
        assert name in failed, (name, records[name])


# --- file names and special files ------------------------------------------------------------

ODD_NAMES = ["with space.wav", "ünïcødé-日本語.wav", "new\nline.wav", "-rf.wav", "--help.wav", "tab\tname.wav",
             "quote'\"$(reboot);`id`.wav", "emoji-🎤.wav", "x" * 240 + ".wav", "z" * 251 + ".wav",   # NAME_MAX
             "back\\slash.wav", "percent%2e%2e.wav"]
BAD_UTF8 = b"latin1-\xe9t\xe9-\xff.wav"


def test_odd_names_and_special_files_never_escape_the_inbox_or_block_it(make_agent, probe, tmp_path):
    agent = make_agent({"inbox": {"settle_ms": 200}}).start(probe)
    inbox = agent.inbox
    passwd_before = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(tone_wav(0.2))
    for i, name in enumerate(ODD_NAMES):
        drop(inbox, name, tone_wav(0.1 + i / 100))
    drop(inbox, BAD_UTF8, tone_wav(0.33))
    os.symlink("/etc/passwd", inbox / "passwd.wav")
    os.symlink(outside / "secret.wav", inbox / "outside-link.wav")
    os.symlink("/etc", inbox / "dir-link.wav")
    os.symlink(inbox / "nowhere", inbox / "dangling.wav")
    os.mkfifo(inbox / "pipe.wav")
    (inbox / "folder.wav").mkdir()
    (inbox / "folder.wav" / "inner.wav").write_bytes(tone_wav(0.1))
    drop(inbox, "zz-good.wav", tone_wav(0.5))

    specials = {"passwd.wav": "forbidden", "outside-link.wav": "forbidden", "dir-link.wav": "forbidden",
                "dangling.wav": "forbidden", "pipe.wav": "forbidden"}
    expected = len(ODD_NAMES) + 1 + len(specials) + 1
    wait_until(lambda: len(_records(inbox)) >= expected, 60,
               f"{expected} files finished (have {sorted(_records(inbox))})")
    records = _records(inbox)
    for name in ODD_NAMES + ["zz-good.wav", os.fsdecode(BAD_UTF8)]:
        assert records[name][0] == "processed", (name, records.get(name))
    for name, code in specials.items():
        assert records[name][0] == "failed" and records[name][1]["code"] == code, (name, records[name])
        assert (inbox / "failed" / name).is_symlink() or name == "pipe.wav"   # the link itself moved
    # Nothing escaped: the targets are untouched and still where they were.
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == passwd_before
    assert Path("/etc/passwd").is_file() and not Path("/etc/passwd").is_symlink()
    assert (outside / "secret.wav").is_file() and Path("/etc").is_dir()
    assert sorted(os.listdir(inbox / "folder.wav")) == ["inner.wav"]                      # the folder left alone
    assert not [p for p in inbox.iterdir() if not p.is_dir()], "something stayed in the inbox"
    assert not list((inbox / ".processing").iterdir())
    transcripts = {m.json["source"]["name"] for m in probe.wait_for(
        f"{agent.root}/event/transcript", count=len(ODD_NAMES) + 2, what="transcripts of the odd names")}
    assert set(ODD_NAMES) <= transcripts
    assert probe.request(agent.root, "ping")["status"] == "ok"
    assert "Traceback" not in agent.log(), agent.log()[-3000:]


# --- request/transcribe with a file name -------------------------------------------------------

FORBIDDEN_FILES = ["../../etc/passwd", "/etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd/",
                   "x.wav\x00../../etc/passwd", "\x00", "inner/../../../etc/passwd", "./x.wav", "..", ".",
                   "processed", ".processing", "failed", "link.wav", "dirlink.wav", "pipe.wav", "x" * 5000,
                   "a/" * 300 + "b.wav", "\\..\\..\\etc\\passwd/", "~root/.ssh/id_rsa", "folder.wav"]


def test_transcribe_file_paths_are_refused(make_agent, probe):
    agent = make_agent().start(probe)
    probe.request(agent.root, "pause")   # keep the watcher off the special files
    inbox = agent.inbox
    os.symlink("/etc/passwd", inbox / "link.wav")
    os.symlink("/etc", inbox / "dirlink.wav")
    os.mkfifo(inbox / "pipe.wav")
    (inbox / "folder.wav").mkdir()
    answers = {}
    for name in FORBIDDEN_FILES:
        answer = probe.request(agent.root, "transcribe", {"file": name})
        answers[name[:40]] = answer["error"]["code"] if answer["status"] == "error" else "ok"
        assert answer["status"] == "error" and answer["error"]["code"] == "forbidden", (name[:80], answer)
    for name in ("nothing-here.wav", "%2e%2e", "x" * 250 + ".wav"):   # plain names that do not exist
        answer = probe.request(agent.root, "transcribe", {"file": name})
        assert answer["error"]["code"] == "not_found", (name[:80], answer)
    assert (inbox / "link.wav").is_symlink() and (inbox / "pipe.wav").exists()   # nothing was claimed
    assert probe.request(agent.root, "ping")["status"] == "ok"
    print(f"\ntranscribe file fuzz: {len(FORBIDDEN_FILES)} path tricks all answered forbidden")
