"""Shared pieces of the benchmarks: statistics, result rows, broker/agent/subscriber helpers.

Why a subscriber of our own instead of tests.support.probe.Probe: the probe keeps every message
and rescans the whole list on each wake-up, which is fine for a test but O(n^2) for the
thousands of events a throughput run produces, and that CPU would be stolen from the agent
being measured on a 2-core machine. `Watcher` only counts and timestamps what it is asked to.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:   # `python bench/run.py` runs from anywhere
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tests.support.agent import AgentProcess  # noqa: E402,F401  (re-exported for the benchmarks)
from tests.support.broker import Broker  # noqa: E402,F401

from agent.settings import TEST_ENGINES_ENV  # noqa: E402

# The benchmarks measure the agent with the model-free test engine (bench_metadata); engines run
# in child processes (bench/engine_child.py) inherit the switch.
os.environ[TEST_ENGINES_ENV] = "1"

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- statistics -------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Percentile with linear interpolation (p in 0..100)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Dist:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def p(self, q: float) -> float:
        return pct(self.values, q)

    def spread(self, fmt: str = "{:.2f}") -> str:
        """median [min-max] (n), or median [IQR] when there are many samples."""
        if not self.values:
            return "n/a"
        if self.n >= 8:
            return f"{fmt.format(self.median)} [IQR {fmt.format(self.p(25))}-{fmt.format(self.p(75))}] (n={self.n})"
        return f"{fmt.format(self.median)} [{fmt.format(self.lo)}-{fmt.format(self.hi)}] (n={self.n})"


def ratios(num: Sequence[float], den: Sequence[float]) -> Dist:
    """Paired ratios of side-by-side measurements (pair i was taken back to back)."""
    return Dist([a / b for a, b in zip(num, den) if b > 0])


def alternate(n: int, *variants: Callable[[int], float]) -> list[list[float]]:
    """Run the variants round-robin n times, swapping the order every round (ABBA...)."""
    out: list[list[float]] = [[] for _ in variants]
    order = list(range(len(variants)))
    for i in range(n):
        seq = order if i % 2 == 0 else order[::-1]
        for j in seq:
            out[j].append(variants[j](i))
    return out


# --- result rows ------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    metric: str
    value: str
    budget: str = ""
    status: str = ""   # PASS / MISS / INFO / SKIP
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, metric: str, value: str, budget: str = "", ok: bool | None = None,
            note: str = "", status: str | None = None) -> None:
        if status is None:
            status = "INFO" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append(Row(section, metric, value, budget, status, note))
        print(f"  [{status}] {section}: {metric} = {value}" + (f"  (budget {budget})" if budget else "")
              + (f"  -- {note}" if note else ""), flush=True)


def table(rows: Iterable[Row], markdown: bool = False) -> str:
    rows = list(rows)
    head = ("#", "Metric", "Result", "Budget", "Status")
    rows = [Row(r.section, r.metric, " ".join(r.value.split()), r.budget, r.status, " ".join(r.note.split()))
            for r in rows]
    body = [(r.section, r.metric + (f" — {r.note}" if r.note and markdown else ""), r.value, r.budget or "-",
             r.status) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [min(max(len(h), *(len(row[i]) for row in body)) if body else len(h), 70) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    for row in body:
        lines.append(fmt.format(*row))
    notes = [f"  {r.section} {r.metric}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


# --- processes --------------------------------------------------------------------------------


def write_marked_block(path: Path, block: str, begin: str, end: str, new_heading: str = "") -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in `path` in place of the one
    between those markers, or append it (after `new_heading`) where there is none yet: a bench
    rewrites its own table in docs/performance.md and leaves the rest of the page alone."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "# Performance\n\n") + new_heading + block + "\n"
    path.write_text(text)


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS)."""
    return _status_kb(pid, "VmRSS") / 1024


def hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) in MB."""
    return _status_kb(pid, "VmHWM") / 1024


def _status_kb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads, not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": mem, "python": sys.version.split()[0],
            "load_avg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


# --- MQTT -------------------------------------------------------------------------------------


class Watcher:
    """A subscriber that timestamps messages (monotonic, on arrival) and wakes waiters cheaply.

    `hooks` run on paho's thread for every message on a topic filter: keep them tiny.
    """

    def __init__(self, port: int, subscribe: Sequence[str] = ("#",), protocol: str = "5",
                 keep: Callable[[str], bool] = lambda topic: True) -> None:
        self.v5 = protocol == "5"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        self.cond = threading.Condition()
        self.counts: dict[str, int] = {}
        self.kept: list[tuple[float, str, bytes]] = []
        self._keep = keep
        self.hooks: list[tuple[str, Callable[[float, str, bytes], None]]] = []
        self._subscribed = threading.Event()
        self._topics = list(subscribe)
        self.client.on_connect = lambda c, *a: [c.subscribe(t, qos=1) for t in self._topics]
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = _nodelay
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("bench subscriber did not subscribe within 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        topic, payload = msg.topic, bytes(msg.payload)
        for f, hook in self.hooks:
            if mqtt.topic_matches_sub(f, topic):
                hook(now, topic, payload)
        with self.cond:
            self.counts[topic] = self.counts.get(topic, 0) + 1
            if self._keep(topic):
                self.kept.append((now, topic, payload))
            self.cond.notify_all()

    def count(self, topic: str) -> int:
        with self.cond:
            return self.counts.get(topic, 0)

    def wait_count(self, topic: str, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.counts.get(topic, 0) >= n, timeout)

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def find(self, topic_filter: str, pred: Callable[[dict], bool] = lambda d: True) -> list[tuple[float, dict]]:
        with self.cond:
            kept = list(self.kept)
        out = []
        for t, topic, payload in kept:
            if mqtt.topic_matches_sub(topic_filter, topic):
                try:
                    body = json.loads(payload) if payload[:1] in (b"{", b"[") else {"raw": payload.decode()}
                except ValueError:
                    continue
                if pred(body):
                    out.append((t, body))
        return out

    def publish(self, topic: str, payload: bytes, qos: int = 1, **kw: Any) -> Any:
        return self.client.publish(topic, payload, qos=qos, **kw)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    import socket
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def agent_config(**sections: Any) -> dict[str, Any]:
    """Bench defaults on top of the test agent's: production log level, no telemetry."""
    base: dict[str, Any] = {"log_level": "INFO", "telemetry": {"interval_s": 0}}
    for k, v in sections.items():
        base[k] = v
    return base


def start_agent(workdir: Path, broker_port: int, config: dict[str, Any], device_id: str | None = None,
                args: list[str] | None = None, timeout: float = 60,
                code: Path | None = None) -> tuple[AgentProcess, Watcher, float]:
    """Start `voice-agent run`; returns the process, a subscriber on its root and run->online seconds.

    `code`: a folder holding another copy of the `agent` and `handlers` packages to run instead
    of the working tree's (bench/ab.py compares a baseline copy with the working tree).
    """
    device = device_id or f"bench-{uuid.uuid4().hex[:6]}"
    env = {"PYTHONPATH": str(code)} if code is not None else None
    agent = AgentProcess(workdir, broker_port, config, device_id=device, args=args, env=env)
    watcher = Watcher(broker_port, subscribe=(f"{agent.root}/#",),
                      keep=lambda t: "/event/" in t or t.endswith("/availability") or "/response/" in t)
    online = threading.Event()
    seen: dict[str, float] = {}

    def on_avail(now: float, topic: str, payload: bytes) -> None:
        if payload == b"online" and not online.is_set():
            seen["t"] = now
            online.set()
    watcher.hooks.append((f"{agent.root}/availability", on_avail))
    t0 = time.monotonic()
    agent.start(None, wait_online=False)
    agent.bench_t0 = t0  # type: ignore[attr-defined]
    deadline = t0 + timeout
    while not online.wait(0.05):
        if not agent.alive() or time.monotonic() > deadline:
            break
    if not online.is_set():
        agent.stop()
        watcher.close()
        raise RuntimeError(f"agent not online within {timeout}s; log:\n{agent.log()[-3000:]}")
    return agent, watcher, seen["t"] - t0


def wait_engines_ready(watcher: Watcher, root: str, timeout: float) -> dict[str, Any] | None:
    """The retained state once the transcriber reports ready (or an error)."""
    got: dict[str, Any] = {}
    ev = threading.Event()

    def on_state(now: float, topic: str, payload: bytes) -> None:
        try:
            state = json.loads(payload)
        except ValueError:
            return
        state = state.get("data", state) if topic.endswith("/response/state") else state
        t = state.get("engines", {}).get("transcriber", {})
        s = state.get("engines", {}).get("summarizer", {})
        if (t.get("ready") or t.get("error")) and (s.get("ready") or s.get("error")):
            got.update(state)
            got["_t"] = now
            ev.set()
    watcher.hooks.append((f"{root}/state", on_state))
    watcher.hooks.append((f"{root}/response/state", on_state))
    watcher.client.subscribe(f"{root}/state", qos=1)   # get the retained copy again
    deadline = time.monotonic() + timeout
    while not ev.wait(0.5) and time.monotonic() < deadline:
        watcher.publish(f"{root}/request/state", b"{}")   # in case a retained update was missed
    return got or None


def unique_copy(data: bytes, i: int) -> bytes:
    """The same WAV with its last sample nudged, so content-hash caches never hit."""
    b = bytearray(data)
    if len(b) > 46:
        b[-2] = (b[-2] + 1 + i) % 256
        b[-1] = (b[-1] + (i >> 8)) % 256
    return bytes(b)


def write_closed(path: Path, data: bytes) -> float:
    """Write a file the way a close-after-write producer does; returns the monotonic close time."""
    with open(path, "wb") as f:
        f.write(data)
    return time.monotonic()


def sh_quote(args: Sequence[str]) -> str:
    import shlex
    return " ".join(shlex.quote(a) for a in args)


# --- audio ------------------------------------------------------------------------------------

SENTENCES = (
    "Turn on the kitchen lights please",
    "What is the weather like tomorrow morning",
    "The quick brown fox jumps over the lazy dog near the river bank",
    "Please remind me to call the plumber about the leaking kitchen tap before Friday",
    "Every morning the old lighthouse keeper walks slowly along the rocky shore and counts the boats",
)
CACHE = REPO / ".cache" / "bench"


def speech_files() -> list[Path]:
    """espeak-ng sentences of about 2 to 5 s as 16 kHz mono WAVs (built once, then reused)."""
    from tests.support.models import speech_wav
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(SENTENCES):
        path = CACHE / f"speech{i}.wav"
        if not path.exists():
            speech_wav(text, path)
        out.append(path)
    return out


def wav_duration_s(path: Path) -> float:
    import wave
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def engine_settings(engine: str) -> dict[str, Any]:
    """The transcriber section for a real engine, with the models shared on this machine."""
    from tests.support.models import faster_whisper_model_dir, whisper_cpp_binary, whisper_cpp_model
    if engine == "faster_whisper":
        model = faster_whisper_model_dir(REPO / ".cache/models/faster-whisper-base")
        return {"engine": "faster_whisper", "faster_whisper": {"model": str(model), "threads": 2}}
    if engine == "whisper_cpp":
        return {"engine": "whisper_cpp", "whisper_cpp": {"binary": str(whisper_cpp_binary()),
                                                          "model": str(whisper_cpp_model()), "threads": 2}}
    if engine == "pocketsphinx":
        return {"engine": "pocketsphinx"}
    return {"engine": engine}


def fmt_ms(x: float) -> str:
    return f"{x:.1f} ms" if x < 100 else f"{x:.0f} ms"
