"""Wake word and noise suppression (issue #24): accuracy, false accepts, latency and cost on a Pi.

    python -m bench wake [--quick] [--doc docs/performance.md] [--json out.json]

1. Detection: okay_nabu and alexa in six espeak-ng voices, clean and in pink noise at 5 dB SNR
   (without and with noise suppression), through the listener's own gate (agent/sources/wake_gate.py).
2. False accepts: all four microWakeWord models at once over 30+ minutes without a wake phrase
   (GPL-3 text read by espeak-ng in six voices at three speeds, the registry recordings of real
   people of tests/support/real_speech.py with alsa-utils' noise sample, and pink / brown / white
   noise at three levels), without and with noise suppression.
3. Noise suppression and the VAD: `speech_start` events (the segmenter, default settings) and
   the frames webrtcvad alone calls voiced, on noise-only audio (steady and in bursts) without
   and with suppression, side by side; and the word error rate of faster-whisper base on the
   real recordings without and with suppression: the suppressed audio itself, and the agent's
   way (the VAD hears the suppressed audio, the segment keeps the captured audio).
4. Cost: a child process in a cgroup v1 cpu controller (quota 0.1 and 0.4 of one core, CFS
   period 20 ms so a short quota is spread like a slow core rather than given in 100 ms bursts)
   runs capture (StdinSource) -> noise suppression -> one wake model -> VAD on every 30 ms block
   as fast as the quota lets it. Real-time factor, share of the quota (budget: 30 %) and the
   resident memory the wake word and suppression add (budget: 15 MB).
5. Latency: `voice-agent run --listen-stdin` (Pi profile's listening: mode wake, okay_nabu,
   noise suppression 2) inside the same cgroup, fed in real time in 10 ms writes; from the write
   of a phrase's last sample to `event/wake` arriving at a subscriber (budget: 300 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Broker, Results, machine, table, write_marked_block  # noqa: E402

SECTION = "wake"
REPO = Path(__file__).resolve().parents[1]
CFS_PERIOD_US = 20_000
QUOTAS = (0.4, 0.1)
BEGIN, END = "<!-- wake:begin -->", "<!-- wake:end -->"
SR = 16000


def _cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


# --- 1. detection -----------------------------------------------------------------------------


def detection(res: Results, raw: dict) -> None:
    from tests.support.wake import VOICES, detections, wake_clip

    for model in ("okay_nabu", "alexa"):
        for label, snr, ns in (("clean", None, 0), ("pink 5 dB SNR, no suppression", 5.0, 0),
                               ("pink 5 dB SNR, suppression 2", 5.0, 2)):
            heard, latency = 0, []
            for voice in VOICES:
                clip = wake_clip(model, voice, snr)
                found = detections(clip.samples, [model], noise_suppression=ns)
                if found:
                    heard += 1
                    latency.append(found[0].at_s - clip.phrase_end_s)
            need = 5 if snr is None else 4
            budget = f">= {need}/6" if ns or snr is None else ""
            res.add(SECTION, f"{model} detected, {label}", f"{heard}/6 voices", budget,
                    ok=(heard >= need) if budget else None)
            raw[f"detect {model} {label}"] = {"heard": heard, "stream_latency_s": latency}


# --- 2. false accepts -------------------------------------------------------------------------


def false_accepts(res: Results, raw: dict, minutes: float) -> None:
    from tests.support.wake import ALL_MICRO, detections, espeak_stream, noise_clips, real_clips

    real = real_clips()
    noise = noise_clips(60.0 if minutes >= 30 else 10.0)
    fixed = sum(len(c.samples) for c in real + noise) / SR
    espeak = list(espeak_stream(max(60.0, minutes * 60 - fixed)))
    parts = {"espeak-ng text, 6 voices": espeak, "real recordings (registry)": real, "noise": noise}
    audio = np.concatenate([c.samples for clips in parts.values() for c in clips])
    total_min = len(audio) / SR / 60
    for label, clips in parts.items():
        raw[f"fa audio {label}"] = round(sum(len(c.samples) for c in clips) / SR / 60, 2)
    for ns in (0, 2):
        cpu = _cpu_s()
        found = detections(audio, ALL_MICRO, noise_suppression=ns)
        cpu = _cpu_s() - cpu
        per_model = {m: sum(d.model == m for d in found) for m in ALL_MICRO}
        res.add(SECTION, f"false accepts, {total_min:.1f} min without a wake phrase, suppression {ns}",
                ", ".join(f"{m} {n}" for m, n in per_model.items()), "0 for okay_nabu and alexa",
                ok=per_model["okay_nabu"] == 0 and per_model["alexa"] == 0)
        raw[f"fa ns{ns}"] = {"minutes": total_min, "per_model": per_model,
                             "at_s": [(d.model, d.at_s, d.probability) for d in found],
                             "cpu_s_4_models": round(cpu, 1)}
        res.add(SECTION, f"in-process CPU, suppression {ns} + 4 models", f"{100 * cpu / (total_min * 60):.2f} % "
                         "of one core here", status="INFO")
    res.add(SECTION, "false-accept audio (minutes)",
            ", ".join(f"{k} {raw[f'fa audio {k}']}" for k in parts), ">= 30 min in total",
            ok=total_min >= 30 if minutes >= 30 else None)


# --- 3. noise suppression and the VAD / transcripts ---------------------------------------------


def _speech_starts(samples: np.ndarray, ns: int, margin: float | None = None) -> tuple[int, float]:
    """(speech_start events of the segmenter, default settings unless `margin` replaces
    vad.energy_margin_db; % of frames webrtcvad alone calls voiced)."""
    import webrtcvad

    from agent.audio.noise import noise_filter
    from agent.audio.segmenter import Segmenter, SpeechStart
    from agent.audio.vad import FrameClassifier
    from agent.settings import VADSettings

    v = VADSettings() if margin is None else VADSettings(energy_margin_db=margin)
    seg = Segmenter(v, SR, classifier=FrameClassifier(v.aggressiveness, v.frame_ms, v.energy_margin_db, SR))
    filt = noise_filter(ns)
    heard = filt.process(samples) if filt is not None else samples
    starts = sum(isinstance(e, SpeechStart) for i in range(0, len(heard), 480) for e in seg.feed(heard[i:i + 480]))
    vad = webrtcvad.Vad(v.aggressiveness)
    frames = [heard[i:i + 480] for i in range(0, len(heard) - 479, 480)]
    voiced = sum(vad.is_speech(f.tobytes(), SR) for f in frames)
    return starts, 100 * voiced / max(1, len(frames))


def _bursts(noise: np.ndarray, seconds: float, on_s: float = 1.5, off_s: float = 2.0) -> np.ndarray:
    """The noise switched on and off (a tap, a fan, a passing car): what an adaptive floor cannot learn."""
    out = np.zeros(int(seconds * SR), dtype=np.int16)
    period, on = int((on_s + off_s) * SR), int(on_s * SR)
    for start in range(int(off_s * SR), len(out), period):
        piece = noise[start % max(1, len(noise) - on):][:on]
        out[start:start + len(piece)] = piece[:len(out) - start]
    return out


def noise_and_vad(res: Results, raw: dict, seconds: float) -> None:
    from agent.audio.wav import decode_file
    from tests.support import real_speech
    from tests.support.speech import pink_noise
    from tests.support.wake import brown_noise

    pink, brown = pink_noise(seconds, -30.0, seed=41), brown_noise(seconds, -30.0, seed=43)
    swell = 10 ** (6 * np.sin(2 * np.pi * 0.3 * np.arange(len(pink)) / SR) / 20)   # +-6 dB at 0.3 Hz
    steady = {"pink -30 dBFS": pink, "brown -30 dBFS": brown}
    real = real_speech.noise_wav()
    if real is not None:
        steady["alsa-utils Noise.wav (real, looped)"] = np.resize(decode_file(real).samples, int(seconds * SR))
    changing = {f"{k} in 1.5 s bursts": _bursts(v, seconds) for k, v in steady.items()}
    changing["pink -30 dBFS swelling +-6 dB at 0.3 Hz"] = np.clip(pink * swell, -32768, 32767).astype(np.int16)
    cases = [(k, v, None) for k, v in steady.items()] + [(k, v, 0.0) for k, v in steady.items()]
    cases += [(k, v, None) for k, v in changing.items()]
    for label, samples, margin in cases:
        figures = [_speech_starts(samples, ns, margin) for ns in (0, 2, 4)]
        vad = "default VAD" if margin is None else f"vad.energy_margin_db {margin:g} (webrtcvad alone)"
        res.add(SECTION, f"{seconds:.0f} s of {label}, {vad}: speech_start / webrtcvad voiced frames, "
                         "suppression 0 | 2 | 4", " | ".join(f"{n} / {pct:.0f} %" for n, pct in figures),
                status="INFO")
        raw[f"noise {label} {vad}"] = figures


def wer_with_suppression(res: Results, raw: dict) -> None:
    try:
        from faster_whisper import WhisperModel

        from tests.support.models import faster_whisper_model_dir
        folder = faster_whisper_model_dir(REPO / ".cache/models/faster-whisper-base")
    except Exception as exc:  # noqa: BLE001 - a missing engine is a SKIP row, not a failed bench
        res.add(SECTION, "WER with noise suppression", f"faster-whisper not available: {exc}", status="SKIP")
        return
    from agent.audio.noise import noise_filter
    from agent.audio.segmenter import Segmenter, SpeechEnd
    from agent.audio.wav import decode_file
    from tests.support import real_speech
    from tests.support.speech import silence

    recordings = real_speech.recordings()
    if len(recordings) < 10:
        res.add(SECTION, "WER with noise suppression", f"only {len(recordings)} recordings: "
                f"{real_speech.unavailable()}", status="SKIP")
        return
    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=2)

    def text(samples: np.ndarray) -> str:
        segments, _ = model.transcribe(samples.astype(np.float32) / 32768, language="en", beam_size=5)
        return " ".join(s.text.strip() for s in segments)

    def agent_way(samples: np.ndarray, ns: int) -> str:
        """As the listener does it: the VAD hears the suppressed audio, the segments keep the captured."""
        padded = np.concatenate([silence(0.5), samples, silence(1.0)])
        padded = padded[:len(padded) - len(padded) % 160]   # whole 10 ms frames, as the listener's gate keeps
        filt = noise_filter(ns)
        heard = filt.process(padded) if filt is not None else None
        seg = Segmenter()
        ends = [e for e in seg.feed(padded, heard) + seg.flush() if isinstance(e, SpeechEnd)]
        return " ".join(text(e.samples) for e in ends)

    figures: dict[str, float] = {}
    for way in ("suppressed audio transcribed", "agent: VAD on suppressed, segment of captured"):
        for ns in (0, 2):
            pairs = []
            for rec in recordings:
                samples = decode_file(rec.path).samples
                if way.startswith("agent"):
                    hyp = agent_way(samples, ns)
                else:
                    filt = noise_filter(ns)
                    hyp = text(filt.process(samples) if filt is not None else samples)
                pairs.append((rec.text, hyp))
            figures[f"{way} {ns}"] = real_speech.wer(pairs)
            raw[f"wer {way} ns{ns}"] = {"wer": figures[f"{way} {ns}"], "pairs": pairs}
        before, after = figures[f"{way} 0"], figures[f"{way} 2"]
        delta = 100 * (after - before)
        agent = way.startswith("agent")
        res.add(SECTION, f"WER of faster-whisper base, {len(recordings)} real recordings, {way}: suppression 0 / 2",
                f"{100 * before:.1f} % / {100 * after:.1f} % ({delta:+.1f} points)",
                "<= +1 point" if agent else "", ok=(delta <= 1.0) if agent else None)


# --- 4. cost in a cgroup ------------------------------------------------------------------------


def child_cost(raw_path: str, chain: str) -> None:
    """In the cgroup: capture -> [suppression 2 -> okay_nabu] -> VAD on every 30 ms block; prints JSON."""
    import numpy as np  # noqa: F811 - the child measures its own imports
    from agent.audio.capture import StdinSource
    from agent.audio.source import EndOfStream
    from agent.audio.vad import FrameClassifier
    from agent.settings import VADSettings
    from bench.common import rss_mb

    v = VADSettings()
    vad = FrameClassifier(v.aggressiveness, v.frame_ms, v.energy_margin_db, SR)
    vad.classify(np.zeros(480, dtype=np.int16))
    base_rss = rss_mb(os.getpid())
    gate = None
    if chain == "wake":
        from tests.support.wake import gate_settings
        from agent.sources.wake_gate import WakeGate
        gate = WakeGate(gate_settings(["okay_nabu"], noise_suppression=2))
    with open(raw_path, "rb") as f:
        source = StdinSource(f)
        t0, c0, n = time.monotonic(), _cpu_s(), 0
        while True:
            try:
                block = source.read(480, 1.0)
            except EndOfStream:
                break
            if block is None:
                continue
            n += len(block)
            if gate is not None:
                gate.process(block)   # never wakes on this audio: measured, not assumed (detections below)
            vad.classify(block)
        wall, cpu = time.monotonic() - t0, _cpu_s() - c0
    print(json.dumps({"audio_s": n / SR, "wall_s": wall, "cpu_s": cpu, "rss_added_mb": rss_mb(os.getpid()) - base_rss,
                      "detections": gate.stats().get("detections", 0) if gate else 0}))


def _short_period_box(quota: float) -> Any:
    from tests.support.cgroup import Box

    box = Box.create(448 * 1024 * 1024, quota, name="va-wake")
    if box.kind == "v1" and box.cpu_dir is not None:
        (box.cpu_dir / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (box.cpu_dir / "cpu.cfs_quota_us").write_text(str(int(quota * CFS_PERIOD_US)))
    elif box.cpu_dir is not None:
        (box.cpu_dir / "cpu.max").write_text(f"{int(quota * CFS_PERIOD_US)} {CFS_PERIOD_US}")
    return box


def cost(res: Results, raw: dict, work: Path, seconds: float) -> None:
    from tests.support.cgroup import CgroupUnavailable
    from tests.support.speech import pink_noise, write_raw
    from tests.support.wake import espeak_stream

    speech = np.concatenate([c.samples for c in espeak_stream(seconds)])[: int(seconds * SR)]
    audio = np.clip(speech.astype(np.int32) + pink_noise(len(speech) / SR, -45.0, seed=51), -32768, 32767)
    raw_file = write_raw(work / "cost.raw", audio.astype(np.int16))
    for quota in QUOTAS:
        figures = {}
        for chain in ("vad", "wake"):
            try:
                box = _short_period_box(quota)
            except CgroupUnavailable as exc:
                res.add(SECTION, "cost in a cgroup", f"cgroups cannot be written here: {exc}", status="SKIP")
                return
            try:
                proc = subprocess.Popen([sys.executable, "-m", "bench.wake", "--child-cost", str(raw_file), chain],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
                box.add(proc.pid)
                out, err = proc.communicate(timeout=600)
            finally:
                box.close()
            if proc.returncode != 0:
                raise RuntimeError(f"cost child failed: {err.decode()[-500:]}")
            figures[chain] = json.loads(out.decode().strip().splitlines()[-1])
        raw[f"cost {quota}"] = figures
        w, b = figures["wake"], figures["vad"]
        share = w["cpu_s"] / w["audio_s"] / quota
        rtf = w["audio_s"] / w["wall_s"]
        res.add(SECTION, f"capture + suppression 2 + okay_nabu + VAD at {quota} core (CFS period 20 ms)",
                f"{100 * share:.1f} % of the quota, {rtf:.1f}x real time (capture + VAD alone "
                f"{100 * b['cpu_s'] / b['audio_s'] / quota:.1f} %)", "<= 30 % of the quota",
                ok=share <= 0.30 and rtf >= 1.0)
        if quota == QUOTAS[0]:
            res.add(SECTION, "resident memory added by suppression + wake word (okay_nabu)",
                    f"{w['rss_added_mb']:.1f} MB", "<= 15 MB", ok=w["rss_added_mb"] <= 15)


# --- 5. latency through the agent ---------------------------------------------------------------


def latency(res: Results, raw: dict, work: Path, broker: Broker) -> None:
    from bench.common import Watcher
    from tests.support.agent import AgentProcess
    from tests.support.cgroup import CgroupUnavailable
    from tests.support.speech import pink_noise, silence
    from tests.support.wake import VOICES, wake_clip

    gap = silence(3.2)
    chunks, ends = [silence(2.0)], []
    for voice in VOICES:
        clip = wake_clip("okay_nabu", voice)
        phrase = clip.samples[int(1.0 * SR):int(clip.phrase_end_s * SR)]
        chunks.append(phrase)
        ends.append(sum(len(c) for c in chunks))
        chunks.append(gap)
    stream = np.concatenate(chunks)
    stream = np.clip(stream.astype(np.int32) + pink_noise(len(stream) / SR, -55.0, seed=61), -32768, 32767)
    pcm = stream.astype("<i2").tobytes()
    variants = {"wake": {"enabled": True, "mode": "wake", "noise_suppression": 2, "command_max_s": 1.0,
                         "wake_word": {"models": ["okay_nabu"]}},
                "continuous": {"enabled": True}}
    for quota, variant in [(q, v) for q in QUOTAS for v in variants]:
        try:
            box = _short_period_box(quota)
        except CgroupUnavailable as exc:
            res.add(SECTION, "wake latency", f"cgroups cannot be written here: {exc}", status="SKIP")
            return
        watcher = Watcher(broker.port, subscribe=("voice/#",))
        agent = AgentProcess(work / f"latency-{quota}-{variant}", broker.port, {"listen": variants[variant]},
                             device_id=f"{variant}-{int(quota * 10)}", args=["--listen-stdin"])
        try:
            agent.start(stdin=subprocess.PIPE)
            box.add(agent.proc.pid)
            watcher.wait(lambda: watcher.count(f"{agent.root}/availability") > 0, 120)
            time.sleep(3.0)   # imports done and the gate open (models load when listening starts)
            written: dict[int, float] = {}
            t0, c0 = time.monotonic(), _proc_cpu(agent.proc.pid)
            step = 160 * 2
            for i in range(0, len(pcm), step):
                due = t0 + i / 2 / SR
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                agent.proc.stdin.write(pcm[i:i + step])
                agent.proc.stdin.flush()
                end_sample = (i + step) // 2
                for e in ends:
                    if end_sample >= e and e not in written:
                        written[e] = time.monotonic()
            cpu = _proc_cpu(agent.proc.pid) - c0
            watcher.wait(lambda: len(watcher.find(f"{agent.root}/event/wake")) >= len(VOICES), 5)
            got = [t for t, _ in watcher.find(f"{agent.root}/event/wake")]
            lat = []
            for e in ends:
                after = [t - written[e] for t in got if t >= written[e] - 0.05]
                if after and after[0] < 2.0:
                    lat.append(after[0])
            agent.proc.stdin.close()
        finally:
            agent.stop()
            watcher.close()
            box.close()
        raw[f"latency {quota} {variant}"] = {"latency_s": lat, "wakes": len(got), "agent_cpu_s": cpu,
                                             "stream_s": len(stream) / SR}
        if variant == "continuous":
            res.add(SECTION, f"agent CPU, continuous listening without suppression (for comparison) at {quota} core",
                    f"{100 * cpu / (len(stream) / SR) / quota:.1f} % of the quota", status="INFO")
            continue
        worst = max(lat) if lat else float("nan")
        res.add(SECTION, f"end of phrase -> event/wake at {quota} core, agent (mode wake, suppression 2)",
                f"median {1000 * float(np.median(lat)):.0f} ms, max {1000 * worst:.0f} ms ({len(lat)}/6 woke)"
                if lat else "no wake", "<= 300 ms", ok=bool(lat) and worst <= 0.3)
        res.add(SECTION, f"agent CPU while listening for the wake word at {quota} core",
                f"{100 * cpu / (len(stream) / SR) / quota:.1f} % of the quota", status="INFO")


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- runner -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-cost"]:
        child_cost(argv[1], argv[2])
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench wake", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 minutes of false-accept audio instead of 32")
    ap.add_argument("--doc", type=Path, help="rewrite the wake block in this markdown file")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--only", default="detection,false_accepts,noise,wer,cost,latency")
    args = ap.parse_args(argv)
    os.environ.setdefault("VOICE_AGENT_TEST_ENGINES", "1")
    wanted = set(args.only.split(","))
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load average {info['load_avg']}", flush=True)
    res, raw = Results(), {}
    work = Path(tempfile.mkdtemp(prefix="voice-agent-wake-bench-"))
    broker = Broker(work / "broker").start()
    try:
        steps = [("detection", lambda: detection(res, raw)),
                 ("false_accepts", lambda: false_accepts(res, raw, 3.0 if args.quick else 32.0)),
                 ("noise", lambda: noise_and_vad(res, raw, 20.0 if args.quick else 60.0)),
                 ("wer", lambda: wer_with_suppression(res, raw)),
                 ("cost", lambda: cost(res, raw, work, 20.0 if args.quick else 60.0)),
                 ("latency", lambda: latency(res, raw, work, broker))]
        for name, step in steps:
            if name in wanted:
                t0 = time.monotonic()
                print(f"== {name} ==", flush=True)
                try:
                    step()
                except Exception as exc:  # one broken step must not hide the others' figures
                    traceback.print_exc()
                    res.add(SECTION, f"{name} failed", f"{type(exc).__name__}: {str(exc)[:200]}", status="ERROR")
                print(f"   ({name} took {time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        broker.stop()
    print("\n" + table(res.rows))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1, default=str))
    if args.doc:
        block = (f"{BEGIN}\n`python -m bench wake{' --quick' if args.quick else ''}` on {info['cpu']} "
                 f"({info['nproc']} cores, load average {info['load_avg']}):\n\n"
                 f"{table(res.rows, markdown=True)}\n{END}")
        write_marked_block(args.doc, block, BEGIN, END, new_heading="## Wake word and noise suppression\n\n")
    return 0 if all(r.status not in ("MISS", "ERROR") for r in res.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
